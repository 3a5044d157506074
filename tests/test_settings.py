"""The service's settings, read without a model or a service: the endpoint
notebook's parameters, their overrides from the environment, the API key file,
the Host header's names, the browser origins handed to flask-cors, and the one
app name that every file agrees on."""

import json
import os
import subprocess

import pytest
from flask import Flask
from flask_cors import CORS

from diabetes.settings import (
    APP_NAME,
    LOCAL_HOST_NAMES,
    SettingRefused,
    allowed_origins,
    host_name_of,
    notebook_defaults,
    override_from_environment,
    read_api_key,
    service_settings,
    trusted_host_names,
)
from tests.conftest import PROJECT

NOBODY = 65534  # a user and group other than the test's own
DEFAULTS = {"port": 5000, "ratio": 0.5, "debug": False, "host": "127.0.0.1"}


def test_the_endpoint_notebooks_parameters_are_read_with_their_types_without_running_it():
    defaults = notebook_defaults(str(PROJECT / "notebooks" / "serve.ipynb"))
    assert {"model_dir", "host", "port", "workers", "max_request_bytes", "max_batch_rows", "api_key"} <= set(defaults)
    assert type(defaults["port"]) is int and 0 < defaults["port"] < 65536
    assert type(defaults["workers"]) is int and defaults["workers"] >= 1
    assert defaults["api_key"] == ""


def test_unset_variables_keep_the_defaults(monkeypatch):
    for name in DEFAULTS:
        monkeypatch.delenv(f"DIABETES_{name.upper()}", raising=False)
    assert override_from_environment(DEFAULTS) == DEFAULTS


@pytest.mark.parametrize(
    "name, raw, expected",
    [
        ("port", "8081", 8081),
        ("ratio", "0.25", 0.25),
        ("debug", "yes", True),
        ("debug", "TRUE", True),
        ("debug", "0", False),
        ("host", "0.0.0.0", "0.0.0.0"),
    ],
)
def test_a_variable_overrides_its_parameter_converted_to_the_defaults_type(monkeypatch, name, raw, expected):
    monkeypatch.setenv(f"DIABETES_{name.upper()}", raw)
    settings = override_from_environment(DEFAULTS)
    assert settings[name] == expected and type(settings[name]) is type(expected)
    assert {key: value for key, value in settings.items() if key != name} == {
        key: value for key, value in DEFAULTS.items() if key != name
    }


@pytest.mark.parametrize(
    "name, raw, expected",
    [
        ("port", "80a", "expected a int"),
        ("ratio", "half", "expected a float"),
        ("debug", "maybe", "expected true or false"),
    ],
)
def test_a_variable_that_is_not_of_its_parameters_type_is_refused_by_name(monkeypatch, name, raw, expected):
    monkeypatch.setenv(f"DIABETES_{name.upper()}", raw)
    with pytest.raises(ValueError, match=f"DIABETES_{name.upper()}={raw!r}: {expected}"):
        override_from_environment(DEFAULTS)


def test_the_service_reads_the_notebooks_parameters_under_the_environments_overrides(monkeypatch):
    monkeypatch.chdir(PROJECT)
    monkeypatch.setenv("DIABETES_PORT", "6123")
    monkeypatch.setenv("DIABETES_MAX_BATCH_ROWS", "7")
    settings = service_settings()
    assert settings["port"] == 6123 and settings["max_batch_rows"] == 7
    assert settings["host"] == notebook_defaults()["host"]


def test_the_api_key_comes_from_its_setting_when_no_file_is_named():
    assert read_api_key("s3cret", "") == "s3cret"
    assert read_api_key("", "") == ""


def test_an_api_key_file_readable_by_its_owner_only_gives_the_key_without_its_newline(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("  from-the-file\n")
    key_file.chmod(0o600)
    assert read_api_key("ignored", str(key_file)) == "from-the-file"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_an_api_key_file_that_others_can_read_is_refused_with_the_fix(tmp_path, mode):
    key_file = tmp_path / "key"
    key_file.write_text("secret\n")
    key_file.chmod(mode)
    with pytest.raises(SettingRefused, match=f"readable by others \\(mode {mode:o}\\): chmod 600 {key_file}"):
        read_api_key("", str(key_file))


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user takes root")
def test_an_api_key_file_of_another_user_is_refused_though_only_its_owner_can_read_it(tmp_path):
    """Another user could rewrite the key the service trusts, or read it: only
    a file of the service's own user holds its key."""
    key_file = tmp_path / "key"
    key_file.write_text("secret\n")
    key_file.chmod(0o600)
    os.chown(key_file, NOBODY, NOBODY)
    with pytest.raises(SettingRefused, match=f"belongs to uid {NOBODY}, not to the service's user \\(uid 0\\)"):
        read_api_key("", str(key_file))
    os.chown(key_file, 0, NOBODY)  # the group may differ: it cannot read a 0600 file
    assert read_api_key("", str(key_file)) == "secret"


def test_an_empty_or_missing_api_key_file_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text(" \n")
    empty.chmod(0o600)
    with pytest.raises(SettingRefused, match="is empty"):
        read_api_key("", str(empty))
    with pytest.raises(SettingRefused, match="cannot read the API key file"):
        read_api_key("", str(tmp_path / "missing"))


def test_by_default_the_host_header_may_name_this_machine_or_the_bound_host():
    assert trusted_host_names("", "127.0.0.1") == LOCAL_HOST_NAMES
    assert trusted_host_names("", "API.example.org") == LOCAL_HOST_NAMES | {"api.example.org"}
    for every_interface in ("0.0.0.0", "::", ""):
        assert trusted_host_names("", every_interface) == LOCAL_HOST_NAMES


def test_trusted_hosts_are_listed_lower_case_without_brackets_or_allow_any():
    assert trusted_host_names(" Example.org, [::1] ,,", "127.0.0.1") == {"example.org", "::1"}
    assert trusted_host_names(" * ", "127.0.0.1") is None


@pytest.mark.parametrize(
    "header, name",
    [
        ("example.org", "example.org"),
        ("Example.ORG:5000", "example.org"),
        ("[::1]:5000", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("[::1", "[::1"),
    ],
)
def test_the_host_headers_name_is_read_without_its_port(header, name):
    assert host_name_of(header) == name


def origin_allowed_by_flask_cors(origins, origin: str) -> bool:
    """Whether flask-cors, given `origins`, lets a page of `origin` read an answer."""
    app = Flask("cors")
    CORS(app, origins=origins)
    app.add_url_rule("/", "answer", lambda: "")
    return app.test_client().get("/", headers={"Origin": origin}).headers.get("Access-Control-Allow-Origin") == origin


def test_flask_cors_alone_lets_in_an_origin_that_only_starts_like_the_pattern():
    """Why allowed_origins anchors the pattern: flask-cors matches from the start only."""
    assert origin_allowed_by_flask_cors(r"https://app\.example\.com", "https://app.example.com.evil.net")


@pytest.mark.parametrize(
    "origin, allowed",
    [
        ("https://app.example.com", True),
        ("HTTPS://App.Example.COM", True),
        ("https://app.example.com.evil.net", False),
        ("https://app.example.com:8443", False),
        ("https://evil.net/https://app.example.com", False),
    ],
)
def test_a_pattern_handed_to_flask_cors_must_match_the_whole_origin(origin, allowed):
    assert origin_allowed_by_flask_cors(allowed_origins(r"https://app\.example\.com"), origin) is allowed


def test_a_pattern_already_anchored_keeps_its_meaning():
    pattern = allowed_origins(r"^https?://(localhost|127\.0\.0\.1)(:\d+)?$")
    assert pattern.match("http://localhost:3000") and pattern.match("HTTP://127.0.0.1")
    assert not pattern.match("http://localhost:3000.evil.net") and not pattern.match("http://localhost:3000\n")


def test_any_origin_one_literal_origin_or_none_are_handed_over_as_they_are():
    assert allowed_origins("*") == "*"
    assert allowed_origins("https://app.example") == "https://app.example"
    assert allowed_origins("") is None


def test_an_origin_pattern_that_is_not_a_regular_expression_is_refused_by_name():
    with pytest.raises(SettingRefused, match=r"cors_origins 'https://\(app' is not a regular expression"):
        allowed_origins("https://(app")


def test_the_makefile_and_the_ecosystem_files_name_the_app_as_the_python_code_does():
    make = subprocess.run(
        ["make", "--no-print-directory", "-s", "-C", str(PROJECT), "--eval", "app-name: ; @echo $(APP)", "app-name"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert make.stdout.strip() == APP_NAME
    listing = subprocess.run(
        [
            "node",
            "-e",
            "console.log(JSON.stringify([require('./ecosystem.config.js'), require('./container/ecosystem.config.js')]"
            ".map((config) => config.apps.map((app) => [app.name, app.out_file]))))",
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
    )
    project_apps, container_apps = json.loads(listing.stdout)
    assert [name for name, _ in project_apps].count(APP_NAME) == 1
    assert dict(project_apps)[APP_NAME].endswith(f"/{APP_NAME}.out.log")
    assert [name for name, _ in container_apps] == [APP_NAME, f"{APP_NAME}-edge"]
