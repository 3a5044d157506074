"""A data URL's credentials never leave the process that connects (issue 22,
item 1), tried as an attacker would: train, and sweep, with URLs that carry
every form of credential, then search every file the runs wrote, what make
printed, and every answer of the service for them. Each credential is a
string of its own, so a failure names the form that leaked."""

import importlib.util
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from diabetes.credentials import REDACTED, REDACTED_URLS, CredentialError, connect_url, redacted
from diabetes.data import DataSourceError, read_training_data, write_table
from diabetes.observability import access_log, keep_books
from tests import test_data
from tests.conftest import FAST_PARAMS, make, needs
from tests.processes import clean_environment

CSV = test_data.CSV
# The tests' PostgreSQL server (tests/test_data.py), whose password is test_data.PASSWORD.
postgres = test_data.postgres

# One credential per form, in one SQLite URL (SQLite ignores them all, with a
# warning that names the argument, never its value) plus one by reference.
QUERY_SECRETS = {
    "passwd": "s3cret-passwd",
    "PWD": "s3cret-pwd",
    "Password": "s3cret-password-any-case",
    "sslpassword": "s3cret-sslpassword",
    "ssl_key_password": "s3cret-ssl-key-password",
}
ODBC_SECRET = "s3cret-odbc-pwd"
REFERENCE_SECRET = "s3cret-by-reference"
REFERENCE = "${CLINIC_DB_TOKEN}"


def sqlite_url(db: Path) -> str:
    query = "&".join(f"{name}={value}" for name, value in QUERY_SECRETS.items())
    odbc = f"DRIVER%3D%7BODBC+Driver+18%7D%3BSERVER%3Ddb%3BUID%3Dtrainer%3BPWD%3D{ODBC_SECRET}%3BEncrypt%3Dyes"
    return f"sqlite:///{db}?{query}&odbc_connect={odbc}&token={REFERENCE}"


SQLITE_SECRETS = [*QUERY_SECRETS.values(), ODBC_SECRET, REFERENCE_SECRET]


def leaks(secrets, *folders: Path) -> list[str]:
    """Every file under the folders that holds one of the secrets (as bytes:
    JSON, HTML, CSV, the model file alike), as 'path: secret'."""
    found, files = [], 0
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file() and not path.is_symlink():
                files += 1
                content = path.read_bytes()
                found += [f"{path}: {secret}" for secret in secrets if secret.encode() in content]
    assert files, f"no file under {folders}: nothing was searched"
    return found


def in_text(secrets, text: str) -> list[str]:
    return [secret for secret in secrets if secret in text]


def train_from(tmp_path: Path, data_url: str, env=None, check=True):
    """`make train` with the fast parameter set and `data_url`, into tmp_path."""
    source = tmp_path / "source.yaml"
    source.write_text(yaml.safe_dump({"data_url": data_url}))
    return make(
        "train",
        f"MODELS_DIR={tmp_path / 'models'}",
        f"RUNS_DIR={tmp_path / 'runs'}",
        f"TRAIN_PARAMS={FAST_PARAMS} {source}",
        "CI=1",
        env=env,
        check=check,
    )


@pytest.fixture(scope="module")
@needs("model")
def sqlite_db(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("db") / "diabetes.sqlite"
    make("db", f"DB={db}")
    return db


@pytest.fixture(scope="module")
def sqlite_run(tmp_path_factory, sqlite_db) -> dict:
    """`make train` from SQLite with every form of credential in the URL."""
    folder = tmp_path_factory.mktemp("sqlite-run")
    url = sqlite_url(sqlite_db)
    result = train_from(folder, url, env=clean_environment(CLINIC_DB_TOKEN=REFERENCE_SECRET))
    return {"url": url, "folder": folder, "output": result.stdout + result.stderr}


def served_app(scripts: Path, model_dir: Path):
    """The generated endpoint script, imported as a worker imports it, serving model_dir."""
    saved = os.environ.get("DIABETES_MODEL_DIR")
    os.environ["DIABETES_MODEL_DIR"] = str(model_dir)
    try:
        spec = importlib.util.spec_from_file_location("serve_for_test_secrets", scripts / "serve.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del os.environ["DIABETES_MODEL_DIR"]
        else:
            os.environ["DIABETES_MODEL_DIR"] = saved
    return module.app


# ---- The redaction, form by form ------------------------------------------------


@pytest.mark.parametrize(
    "url, expected",
    [
        (  # the authority's password: SQLAlchemy's own render_as_string(hide_password=True)
            "postgresql+psycopg://trainer:s3cret@db.example:5432/clinic?sslmode=require",
            "postgresql+psycopg://trainer:***@db.example:5432/clinic?sslmode=require",
        ),
        ("postgresql://trainer:p%40ss%2Fw0rd@db/clinic", "postgresql://trainer:***@db/clinic"),
        (
            "postgresql+psycopg://trainer@db/clinic?password=s3cret",
            "postgresql+psycopg://trainer@db/clinic?password=***",
        ),
        ("mysql+pymysql://trainer@db/clinic?passwd=s3cret", "mysql+pymysql://trainer@db/clinic?passwd=***"),
        ("mssql+pyodbc://trainer@dsn?PWD=s3cret", "mssql+pyodbc://trainer@dsn?PWD=***"),
        ("postgresql://trainer@db/clinic?PassWord=s3cret", "postgresql://trainer@db/clinic?PassWord=***"),
        (
            "postgresql+psycopg://trainer@db/clinic?sslmode=verify-full&sslpassword=s3cret",
            "postgresql+psycopg://trainer@db/clinic?sslmode=verify-full&sslpassword=***",
        ),
        (
            "mysql+pymysql://trainer@db/clinic?ssl_key_password=s3cret",
            "mysql+pymysql://trainer@db/clinic?ssl_key_password=***",
        ),
        (
            "snowflake://trainer@account/db?private_key_file_pwd=s3cret&token=s3cret2",
            "snowflake://trainer@account/db?private_key_file_pwd=***&token=***",
        ),
        (
            "postgresql://trainer@db/clinic?password=s3cret&password=s3cret2",
            "postgresql://trainer@db/clinic?password=***&password=***",
        ),
        (  # an ODBC string, URL-encoded, whose PWD is a nested credential
            "mssql+pyodbc:///?odbc_connect=DRIVER%3D%7BODBC+Driver+18%7D%3BSERVER%3Ddb%3BUID%3Dtrainer%3BPWD%3Ds3cret",
            "mssql+pyodbc:///?odbc_connect=DRIVER%3D%7BODBC+Driver+18%7D%3BSERVER%3Ddb%3BUID%3Dtrainer%3BPWD%3D***",
        ),
        (  # ... written plain, its value braced (with ; and an escaped } in it), any case
            "mssql+pyodbc:///?odbc_connect=DRIVER={ODBC Driver 18};UID=trainer;pwd={s3c;ret}}};Encrypt=yes",
            "mssql+pyodbc:///?odbc_connect=DRIVER%3D%7BODBC+Driver+18%7D%3BUID%3Dtrainer%3Bpwd%3D***%3BEncrypt%3Dyes",
        ),
        (  # a libpq keyword string, and a nested URL
            "postgresql://trainer@db/clinic?dsn=host%3Ddb+password%3Ds3cret+user%3Dtrainer",
            "postgresql://trainer@db/clinic?dsn=host%3Ddb+password%3D***+user%3Dtrainer",
        ),
        (
            "db2://u@h/x?forward=postgresql://trainer:s3cret@db/clinic",
            "db2://u@h/x?forward=postgresql%3A%2F%2Ftrainer%3A***%40db%2Fclinic",
        ),
        (  # references are kept as written: they are not secret
            "postgresql+psycopg://trainer:${CLINIC_DB_PASSWORD}@db/clinic?sslpassword=${file:/run/secrets/key}",
            "postgresql+psycopg://trainer:${CLINIC_DB_PASSWORD}@db/clinic?sslpassword=${file:/run/secrets/key}",
        ),
        (
            "postgresql+psycopg://trainer:${CLINIC_DB_PASSWORD}@db/clinic?password=s3cret",
            "postgresql+psycopg://trainer:${CLINIC_DB_PASSWORD}@db/clinic?password=***",
        ),
        # nothing to hide: as written; file paths are no URLs
        ("sqlite:///build/diabetes.sqlite", "sqlite:///build/diabetes.sqlite"),
        (
            "postgresql+psycopg://trainer@db:5432/clinic?sslmode=require",
            "postgresql+psycopg://trainer@db:5432/clinic?sslmode=require",
        ),
        ("data/pima-indians-diabetes.data.csv", "data/pima-indians-diabetes.data.csv"),
        ("build/bigdata/*.parquet", "build/bigdata/*.parquet"),
    ],
)
def test_every_form_of_credential_is_redacted_and_nothing_else(url, expected):
    assert redacted(url) == expected
    assert "s3c" not in redacted(url) and "p%40ss" not in redacted(url)


def test_a_reference_is_expanded_only_where_it_connects(tmp_path):
    key = tmp_path / "key"
    key.write_text("s3cret-from-a-file\n")
    url = f"postgresql+psycopg://trainer:${{CLINIC_DB_PASSWORD}}@db/clinic?sslpassword=${{file:{key}}}"
    connecting = connect_url(url, environ={"CLINIC_DB_PASSWORD": "p@ss/w:rd;"})
    assert connecting.password == "p@ss/w:rd;", "expanded as it is, whatever characters it holds"
    assert connecting.query["sslpassword"] == "s3cret-from-a-file"
    assert redacted(url) == url
    with pytest.raises(CredentialError, match=r"\$\{CLINIC_DB_PASSWORD\}: the environment variable .* is not set"):
        connect_url(url, environ={})


def test_a_redacted_url_connects_only_with_the_url_its_run_was_handed():
    url = "sqlite:///build/diabetes.sqlite?passwd=s3cret"
    with pytest.raises(CredentialError, match=r"removed when it was recorded.*\$\{NAME\}"):
        connect_url(redacted(url), environ={})
    handed = connect_url(redacted(url), environ={REDACTED_URLS: json.dumps({redacted(url): url})})
    assert handed.query["passwd"] == "s3cret"


# ---- make train from SQLite: every query form, and a reference ----------------------


@pytest.mark.model
def test_no_file_of_the_run_holds_a_credential(sqlite_run):
    folder = sqlite_run["folder"]
    version = (folder / "models" / "latest").resolve()
    for record in ("metadata.json", "train.ipynb", "train.html", "data.csv"):
        assert (version / record).exists(), record
    assert (folder / "runs" / "train.ipynb").exists() and (folder / "runs" / "train.html").exists()
    assert leaks(SQLITE_SECRETS, folder / "models", folder / "runs") == []


@pytest.mark.model
def test_the_run_records_and_prints_the_source_redacted(sqlite_run):
    version = (sqlite_run["folder"] / "models" / "latest").resolve()
    source = json.loads((version / "metadata.json").read_text())["data"]["source"]
    assert source == redacted(sqlite_run["url"])
    assert source.count(REDACTED) == len(QUERY_SECRETS) + 1 and REFERENCE in source
    executed = json.loads((version / "train.ipynb").read_text())
    assert executed["metadata"]["papermill"]["parameters"]["data_url"] == source
    [injected] = [cell for cell in executed["cells"] if "injected-parameters" in cell["metadata"].get("tags", [])]
    assert f'data_url = "{source}"' in "".join(injected["source"])
    assert f"rows from {source}" in sqlite_run["output"]
    assert in_text(SQLITE_SECRETS, sqlite_run["output"]) == [], "make train's log"


@pytest.mark.model
@pytest.mark.server
def test_no_answer_of_the_service_holds_a_credential(sqlite_run, scripts, capfd, monkeypatch):
    version = (sqlite_run["folder"] / "models" / "latest").resolve()
    app = served_app(scripts, version)
    keep_books()
    access_lines = []
    monkeypatch.setattr(access_log(), "write_out", access_lines.append)
    client = app.test_client()
    answers = {}
    for rule in app.url_map.iter_rules():
        if "GET" in rule.methods and "<path:" not in rule.rule:
            path = rule.rule.replace("<name>", "diabetes").replace("<version>", version.name)
            with client.get(path) as answer:
                answers[path] = (answer.status_code, answer.get_data(as_text=True))
    assert answers["/metadata"][0] == 200
    assert json.loads(answers["/metadata"][1])["data"]["source"] == redacted(sqlite_run["url"])
    assert len(answers) > 10
    for path, (_, body) in answers.items():
        assert in_text(SQLITE_SECRETS, body) == [], path
    keep_books()  # the access log's lines of these requests, written out
    logs = b"".join(access_lines).decode() + "".join(capfd.readouterr())
    assert '"route":"/metadata"' in logs, "the access log was captured"
    assert in_text(SQLITE_SECRETS, logs) == [], "the service's logs"


# ---- PostgreSQL: the authority's password, by value and by reference -----------------


@pytest.mark.model
@pytest.mark.database
def test_a_password_in_the_url_reaches_postgresql_and_no_file(postgres, tmp_path):
    ssl_secret = "s3cret-sslpassword-unused"
    url = postgres["url"].replace("postgres@", f"postgres:{test_data.PASSWORD}@") + f"?sslpassword={ssl_secret}"
    write_table(read_training_data(str(CSV)).rows, url)
    result = train_from(tmp_path, url)  # no PGPASSWORD: only the URL gives it
    secrets = [test_data.PASSWORD, ssl_secret]
    source = json.loads((tmp_path / "models" / "latest" / "metadata.json").read_text())["data"]["source"]
    assert source == postgres["url"].replace("postgres@", "postgres:***@") + "?sslpassword=***"
    assert leaks(secrets, tmp_path / "models", tmp_path / "runs") == []
    assert in_text(secrets, result.stdout + result.stderr) == []


@pytest.mark.model
@pytest.mark.database
def test_a_password_by_reference_reaches_postgresql_and_is_recorded_as_the_reference(postgres, tmp_path, monkeypatch):
    password_file = tmp_path / "password"
    password_file.write_text(test_data.PASSWORD + "\n")
    monkeypatch.setenv("CLINIC_PG_PASSWORD", test_data.PASSWORD)
    write_table(
        read_training_data(str(CSV)).rows, postgres["url"].replace("postgres@", "postgres:${CLINIC_PG_PASSWORD}@")
    )
    for reference in ("${CLINIC_PG_PASSWORD}", f"${{file:{password_file}}}"):
        url = postgres["url"].replace("postgres@", f"postgres:{reference}@")
        data = read_training_data(url)
        assert len(data.rows) == 768 and data.source == url
    monkeypatch.delenv("CLINIC_PG_PASSWORD")
    with pytest.raises(DataSourceError, match=r"CLINIC_PG_PASSWORD is not set") as refused:
        read_training_data(postgres["url"].replace("postgres@", "postgres:${CLINIC_PG_PASSWORD}@"))
    assert test_data.PASSWORD not in str(refused.value)


def test_a_drivers_message_is_scrubbed_of_the_credentials(tmp_path):
    # SQLAlchemy's own message hides the authority's password, not the query's.
    secret = "s3cret-in-a-drivers-message"
    with pytest.raises(DataSourceError, match="Invalid SQLite URL") as refused:
        read_training_data(f"sqlite://trainer@/{tmp_path}/x.sqlite?passwd={secret}")
    assert secret not in str(refused.value) and "passwd=***" in str(refused.value)


# ---- make sweep: a credential in a base file, in a run, in a failing run ---------------


@pytest.fixture(scope="module")
def secret_sweep(tmp_path_factory, sqlite_db) -> dict:
    folder = tmp_path_factory.mktemp("secret-sweep")
    base_db = folder / "db.yaml"
    base_db.write_text(yaml.safe_dump({"data_url": f"sqlite:///{sqlite_db}?passwd=s3cret-sweep-base"}))
    runs = {
        "own": {"data_url": f"sqlite:///{sqlite_db}?PWD=s3cret-sweep-run"},
        "broken": {
            "data_url": f"sqlite:///{sqlite_db}?password=s3cret-sweep-broken",
            "data_query": "SELECT * FROM no_such_table",
        },
    }
    spec = folder / "sweep.yaml"
    spec.write_text(
        yaml.safe_dump({"base": [*FAST_PARAMS.split(), str(base_db)], "grid": {"max_depth": [1]}, "runs": runs})
    )
    result = make(
        "sweep", f"SWEEP={spec}", f"SWEEPS_DIR={folder / 'sweeps'}", f"MODELS_DIR={folder / 'models'}", timeout=600
    )
    return {
        "dir": (folder / "sweeps" / "latest").resolve(),
        "output": result.stdout + result.stderr,
        "secrets": ["s3cret-sweep-base", "s3cret-sweep-run", "s3cret-sweep-broken"],
    }


@pytest.mark.model
def test_no_file_of_a_sweep_holds_a_credential(secret_sweep):
    sweep_dir = secret_sweep["dir"]
    for record in ("results.csv", "report.html", "report.ipynb", "sweep.yaml", "best.yaml"):
        assert (sweep_dir / record).exists(), record
    assert leaks(secret_sweep["secrets"], sweep_dir) == []
    assert in_text(secret_sweep["secrets"], secret_sweep["output"]) == [], "make sweep's output"


@pytest.mark.model
def test_a_sweep_runs_with_its_credentials_and_shows_them_redacted(secret_sweep):
    results = pd.read_csv(secret_sweep["dir"] / "results.csv", dtype={"run": str}).set_index("run")
    assert results.loc["001", "status"] == "ok" and results.loc["own", "status"] == "ok"
    assert results.loc["own", "data_url"].endswith("?PWD=***")
    assert results.loc["broken", "status"] == "failed"
    assert (
        "no such table: no_such_table" in results.loc["broken", "error"]
        and "password=***" in results.loc["broken", "error"]
    )
    base_run = json.loads((secret_sweep["dir"] / "runs" / "001" / "models" / "latest" / "metadata.json").read_text())
    assert base_run["data"]["source"].endswith("?passwd=***")
