"""Credentials in data URLs: recorded and shown only redacted, named by
reference, and handed only to the process that connects.

A training run records its data source in many places: the model's metadata
(which GET /metadata serves to anyone), the executed notebook and its HTML (in
build/runs/ and in the model version), a sweep's parameter files, results and
report, and the logs. Each holds `redacted(url)`, never the URL as given:

- the password of the URL's authority (`user:PASSWORD@host`), hidden by
  SQLAlchemy's own `render_as_string(hide_password=True)`;
- the value of every query argument whose name contains one of
  `SECRET_MARKERS`, in any case: `password`, `passwd` and `PWD` (MySQL and
  ODBC drivers), `sslpassword` (libpq), `ssl_key_password` (PyMySQL),
  `private_key_file_pwd` (Snowflake), `access_token`, `client_secret`...;
- inside the value of any query argument, a driver string's keys of that kind
  (`odbc_connect=DRIVER={...};UID=trainer;PWD=...`, libpq's
  `password=... host=...`) and the password of a nested URL.

Each becomes `***`. A URL with nothing to hide is kept exactly as written;
file paths (CSV, Parquet) are not URLs and are kept too.

Better, a credential need not be written anywhere: `${NAME}` in the URL is
the environment variable NAME, `${file:PATH}` the content of the file PATH
(without its final newline: Docker's and Kubernetes' secrets are files).
`connect_url` expands them in the process that connects, and nowhere else;
every record shows the reference as written:

    postgresql+psycopg://trainer:${CLINIC_DB_PASSWORD}@db.example:5432/clinic
    mssql+pyodbc:///?odbc_connect=DRIVER={ODBC Driver 18};SERVER=db;UID=trainer;PWD={${file:/run/secrets/db}}

A literal credential still trains: `make train` and `make sweep` give the
notebook the redacted URL (papermill writes the parameters it injects into
the executed notebook, whence train.html and the model's copy), and the URL
itself only in the environment of that run's processes (`REDACTED_URLS`: a
JSON object from each redacted URL to the URL), where `connect_url` finds it
again. A redacted URL without it is refused, saying why.

    python -m diabetes.credentials run COMMAND [ARG ...]

runs COMMAND (papermill) with each `-f FILE` and `-p NAME VALUE` whose URL
holds a credential replaced by its redacted form (a copy of FILE in a
private temporary folder, removed afterwards), and the URLs in COMMAND's
environment.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from urllib.parse import quote, quote_plus

import yaml

# Query arguments (and keys of driver strings) whose value is a credential:
# those whose name contains one of these, in any case.
SECRET_MARKERS = ("password", "passwd", "pwd", "passphrase", "secret", "token", "credential", "apikey", "api_key")
REDACTED = "***"
# The environment variable through which `run` hands the URLs it redacted to
# the process that connects: {"redacted URL": "URL"}, as JSON.
REDACTED_URLS = "DIABETES_REDACTED_URLS"

_REFERENCE = re.compile(r"\$\{([^}]*)\}")
_ENVIRONMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_KEY = "[\\w.-]*(?:" + "|".join(SECRET_MARKERS) + ")[\\w.-]*"
# key=value in a driver string: braced ({...}, with }} for }), quoted, else up to
# the next ";" in an ODBC string (its values may hold spaces), or the next blank.
_QUOTED = r"\{(?:[^}]|\}\})*\}|'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""
_PAIR_IN_ODBC = re.compile(rf"(?i)(?<![\w.-])({_SECRET_KEY})(\s*=\s*)({_QUOTED}|[^;]*)")
_PAIR_IN_KEYWORDS = re.compile(rf"(?i)(?<![\w.-])({_SECRET_KEY})(\s*=\s*)({_QUOTED}|\S*)")
_NESTED_URL = re.compile(r"([A-Za-z][\w+.-]*://[^:/@\s;?#]*):([^@\s;/]*)@")


class CredentialError(ValueError):
    """A credential cannot be had: a reference to nothing, or a URL redacted
    where the credential is needed. The message never holds a credential."""


def is_url(value) -> bool:
    return isinstance(value, str) and "://" in value


def redacted(url: str) -> str:
    """The URL with every credential replaced by ***; references (`${NAME}`)
    kept as written; unchanged if it holds none."""
    url = str(url)
    text, references = _hide_references(url)
    try:
        parsed = _make_url(text)
    except ValueError:  # not a SQLAlchemy URL (its ArgumentError is a ValueError): hide what looks like one
        return _restore(_redacted_driver_string(text, references, REDACTED)[0], references)
    hidden, marker, found = _redacted_url(parsed, references)
    if not found:
        return url
    rendered = hidden.render_as_string(hide_password=_is_literal(parsed.password, references))
    return _restore(rendered.replace(marker, REDACTED), references)


def credentials(url) -> list[str]:
    """The credentials a URL holds as literal text (a URL object: as it connects)."""
    if not isinstance(url, str):
        url = url.render_as_string(hide_password=False)
    text, references = _hide_references(url)
    try:
        found = _redacted_url(_make_url(text), references)[2]
    except ValueError:
        found = _redacted_driver_string(text, references, REDACTED)[1]
    return sorted({_restore(value, references) for value in found if value}, key=len, reverse=True)


def scrubbed(text: str, url) -> str:
    """Text (an error message) with the URL's credentials, as written or
    URL-encoded, replaced by ***."""
    for value in credentials(url):
        for form in (value, quote(value, safe=""), quote_plus(value, safe="")):
            text = text.replace(form, REDACTED)
    return text


def connect_url(url: str, environ=None):
    """The sqlalchemy URL to connect with: a redacted URL found again through
    REDACTED_URLS, then `${NAME}` and `${file:PATH}` expanded. CredentialError
    if a credential cannot be had; ValueError if it is no SQLAlchemy URL."""
    environ = os.environ if environ is None else environ
    url = str(url)
    url = json.loads(environ.get(REDACTED_URLS) or "{}").get(url, url)
    if REDACTED in credentials(url):
        raise CredentialError(
            f"{redacted(url)} holds {REDACTED} where a credential was removed when it was recorded: give the URL "
            "with its credential, or better, name it by reference: ${NAME} for an environment variable, "
            "${file:PATH} for a file"
        )
    text, references = _hide_references(url)
    parsed = _make_url(text)
    expanded = {token: _expanded(reference, environ) for token, reference in references.items()}

    def expand(value):
        if isinstance(value, tuple):
            return tuple(expand(part) for part in value)
        return None if value is None else _restore(value, expanded)

    return parsed.set(
        username=expand(parsed.username),
        password=expand(parsed.password),
        host=expand(parsed.host),
        database=expand(parsed.database),
        query={key: expand(value) for key, value in parsed.query.items()},
    )


def private_parameters(parameters: dict) -> tuple[dict, dict]:
    """(the parameters with each URL redacted: what may be written, {redacted URL: URL})."""
    record, hidden = {}, {}
    for name, value in parameters.items():
        record[name] = redacted(value) if is_url(value) else value
        if record[name] != value:
            hidden[record[name]] = value
    return record, hidden


def environment(hidden: dict, environ=None) -> dict:
    """The environment of a process that gets the URLs `hidden` holds (as private_parameters gives them)."""
    environ = dict(os.environ if environ is None else environ)
    if hidden:
        known = json.loads(environ.get(REDACTED_URLS) or "{}")
        environ[REDACTED_URLS] = json.dumps({**known, **hidden})
    return environ


def run(command: list[str]) -> int:
    """COMMAND with its -f files and -p values redacted, the URLs in its environment."""
    command, hidden = list(command), {}
    with tempfile.TemporaryDirectory(prefix="diabetes-parameters-") as folder:
        for index, option in enumerate(command[:-1]):
            if option in ("-f", "--parameters_file"):
                path = Path(command[index + 1])
                record, found = private_parameters(yaml.safe_load(path.read_text()) or {})
                if found:
                    copy = Path(folder) / f"{index}-{path.name}"
                    copy.write_text(yaml.safe_dump(record, sort_keys=False))
                    command[index + 1], hidden = str(copy), {**hidden, **found}
            elif option in ("-p", "--parameters") and index + 2 < len(command):
                value = command[index + 2]
                if is_url(value) and redacted(value) != value:
                    command[index + 2] = redacted(value)
                    hidden[command[index + 2]] = value
        return subprocess.run(command, env=environment(hidden)).returncode


def _make_url(text: str):
    """The parsed URL; ValueError, without the text, if it is none."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(text)
    except ArgumentError as error:
        raise ValueError(str(error)) from None


def _hide_references(url: str) -> tuple[str, dict]:
    """The URL with each reference replaced by a token of letters and digits
    (which no parsing or quoting alters), and {token: reference}."""
    references = {}

    def token(match):
        name = f"reference{uuid.uuid4().hex}"
        references[name] = match.group(0)
        return name

    return _REFERENCE.sub(token, url), references


def _restore(text: str, replacements: dict) -> str:
    for token, value in replacements.items():
        text = text.replace(token, value)
    return text


def _is_literal(value, references) -> bool:
    """A credential written out (not absent, not exactly one reference)."""
    return bool(value) and value not in references


def _is_secret_key(key: str) -> bool:
    return any(marker in key.lower() for marker in SECRET_MARKERS)


def _redacted_url(url, references):
    """(the URL with a marker where each credential of its query was, the
    marker, the credentials found: its password too)."""
    found = [url.password] if _is_literal(url.password, references) else []
    marker = f"redacted{uuid.uuid4().hex}"  # letters and digits: rendering leaves it as it is
    query = {}
    for key, values in url.query.items():
        hidden = []
        for value in values if isinstance(values, tuple) else (values,):
            if _is_secret_key(key) and _is_literal(value, references):
                found.append(value)
                value = marker
            else:
                value, nested = _redacted_driver_string(value, references, marker)
                found += nested
            hidden.append(value)
        query[key] = tuple(hidden) if isinstance(values, tuple) else hidden[0]
    return url.set(query=query), marker, found


def _redacted_driver_string(value: str, references, marker: str) -> tuple[str, list[str]]:
    """A query argument's value with the credentials of a driver string or of
    a nested URL replaced by `marker`, and the credentials found."""
    found = []

    def pair(match):
        key, equals, secret = match.groups()
        inner = secret[1:-1] if secret[:1] in "{'\"" and len(secret) > 1 else secret
        if not _is_literal(inner, references):
            return match.group(0)
        found.extend([secret, inner.replace("}}", "}")])
        return f"{key}{equals}{marker}"

    def nested(match):
        start, secret = match.groups()
        if not _is_literal(secret, references):
            return match.group(0)
        found.append(secret)
        return f"{start}:{marker}@"

    value = (_PAIR_IN_ODBC if ";" in value else _PAIR_IN_KEYWORDS).sub(pair, value)
    return _NESTED_URL.sub(nested, value), found


def _expanded(reference: str, environ) -> str:
    name = reference[2:-1]
    if name.startswith("file:"):
        path = Path(name.removeprefix("file:")).expanduser()
        try:
            return path.read_text().removesuffix("\n").removesuffix("\r")
        except OSError as error:
            raise CredentialError(f"{reference}: cannot read {path}: {error.strerror}") from None
    if not _ENVIRONMENT_NAME.fullmatch(name):
        raise CredentialError(f"{reference} names no environment variable (${{NAME}}) and no file (${{file:PATH}})")
    if name not in environ:
        raise CredentialError(f"{reference}: the environment variable {name} is not set")
    return environ[name]


def main(argv) -> int:
    if len(argv) < 2 or argv[0] != "run":
        print("usage: python -m diabetes.credentials run COMMAND [ARG ...]", file=sys.stderr)
        return 2
    return run(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
