"""Training data from a CSV file, SQLite (`make db`) and a real PostgreSQL
server: the same rows give the same hash, model and metrics; a bad source is a
clear error and publishes nothing."""

import glob
import hashlib
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from diabetes.data import DataSourceError, read_training_data, redacted, write_table
from tests.conftest import FAST_PARAMS, PROJECT, make, needs
from tests.processes import clean_environment, free_port

CSV = PROJECT / "data" / "pima-indians-diabetes.data.csv"
PASSWORD = "not-in-any-file"


@pytest.fixture(scope="module")
@needs("model")
def sqlite_db(tmp_path_factory) -> Path:
    """`make db`, into a folder of the tests."""
    db = tmp_path_factory.mktemp("db") / "diabetes.sqlite"
    make("db", f"DB={db}")
    return db


def train_from(tmp_path: Path, parameters: str, env=None, check=True):
    """`make train` with the fast parameter set and `parameters` (YAML) on top."""
    extra = tmp_path / "source.yaml"
    extra.write_text(parameters)
    return make(
        "train",
        f"MODELS_DIR={tmp_path / 'models'}",
        f"RUNS_DIR={tmp_path / 'runs'}",
        f"TRAIN_PARAMS={FAST_PARAMS} {extra}",
        env=env,
        check=check,
    )


def assert_same_model(version: Path, reference: Path):
    ours, theirs = (json.loads((path / "metadata.json").read_text()) for path in (version, reference))
    assert ours["data"]["sha256"] == theirs["data"]["sha256"]
    assert ours["data"]["rows"] == theirs["data"]["rows"] == 768
    assert ours["model_sha256"] == theirs["model_sha256"], "the same rows should give the same model file"
    assert ours["metrics"] == theirs["metrics"]
    assert (version / "predictions.csv").read_bytes() == (reference / "predictions.csv").read_bytes()
    return ours


@pytest.mark.model
def test_make_db_holds_the_csv_rows_under_the_same_hash(sqlite_db):
    from_csv, from_sqlite = read_training_data(str(CSV)), read_training_data(f"sqlite:///{sqlite_db}")
    assert len(from_sqlite.rows) == 768
    assert from_sqlite.rows.equals(from_csv.rows)
    assert from_sqlite.sha256 == from_csv.sha256
    assert from_sqlite.query == "SELECT * FROM pima_diabetes ORDER BY row_id"


@pytest.mark.model
def test_the_hash_names_the_rows_and_changes_with_them(sqlite_db):
    everything = read_training_data(f"sqlite:///{sqlite_db}")
    fewer = read_training_data(
        f"sqlite:///{sqlite_db}", "SELECT * FROM pima_diabetes WHERE row_id < 700 ORDER BY row_id"
    )
    assert len(fewer.rows) == 700
    assert fewer.sha256 != everything.sha256
    assert hashlib.sha256(fewer.canonical).hexdigest() == fewer.sha256


def test_a_password_never_reaches_the_recorded_source():
    assert (
        redacted("postgresql+psycopg://trainer:s3cret@db.example:5432/clinic?sslmode=require")
        == "postgresql+psycopg://trainer:***@db.example:5432/clinic?sslmode=require"
    )
    assert "s3cret" not in redacted("postgresql+psycopg://trainer@db.example/clinic?password=s3cret")


@pytest.mark.model
@pytest.mark.parametrize(
    "url, query, expected",
    [
        ("nosuchdialect://somewhere/db", "", "Can't load plugin"),
        ("sqlite:///{missing_dir}/x.sqlite", "", "cannot connect"),
        ("{db}", "SELECT * FROM no_such_table", "no such table"),
        ("{db}", "SELEC 1", "syntax error"),
        ("{db}", "SELECT glucose, class_var FROM pima_diabetes", "lack column(s) times_pregnant"),
        (
            "{db}",
            "SELECT times_pregnant, 'high' AS glucose, blood_pressure, skin_fold_thick, serum_insuling, "
            "mass_index, diabetes_pedigree, age, class_var FROM pima_diabetes",
            "column glucose",
        ),
        (
            "{db}",
            "SELECT times_pregnant, glucose, blood_pressure, skin_fold_thick, serum_insuling, mass_index, "
            "diabetes_pedigree, age, class_var * 2 AS class_var FROM pima_diabetes",
            "must be 0 or 1",
        ),
        ("{db}", "SELECT * FROM pima_diabetes WHERE 1 = 0", "no rows"),
        ("no/such/file.csv", "", "does not exist"),
    ],
)
def test_a_bad_source_is_a_clear_error(sqlite_db, tmp_path, url, query, expected):
    url = url.format(db=f"sqlite:///{sqlite_db}", missing_dir=tmp_path / "missing")
    with pytest.raises(DataSourceError) as error:
        read_training_data(url, query)
    assert expected in str(error.value)


@pytest.mark.model
def test_training_from_sqlite_gives_the_model_and_metrics_of_the_csv(trained, sqlite_db, tmp_path):
    train_from(tmp_path, f"data_url: sqlite:///{sqlite_db}\n")
    version = (tmp_path / "models" / "latest").resolve()
    metadata = assert_same_model(version, (trained["models_dir"] / "latest").resolve())
    assert metadata["data"]["source"] == f"sqlite:///{sqlite_db}"
    assert metadata["data"]["query"] == "SELECT * FROM pima_diabetes ORDER BY row_id"
    snapshot = version / metadata["data"]["snapshot"]
    assert hashlib.sha256(snapshot.read_bytes()).hexdigest() == metadata["data"]["sha256"]


@pytest.mark.model
def test_a_bad_query_fails_in_the_data_cell_and_publishes_nothing(sqlite_db, tmp_path):
    result = train_from(tmp_path, f"data_url: sqlite:///{sqlite_db}\ndata_query: SELECT * FROM patients\n", check=False)
    assert result.returncode != 0
    assert "DataSourceError" in result.stdout + result.stderr
    assert "no such table: patients" in result.stdout + result.stderr
    assert not (tmp_path / "models").exists()
    executed = json.loads((tmp_path / "runs" / "train.ipynb").read_text())
    [failed] = [
        cell
        for cell in executed["cells"]
        if any(output.get("output_type") == "error" for output in cell.get("outputs", []))
    ]
    assert "trainer.read(data_url, data_query)" in "".join(failed["source"])


def postgres_bin(program: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"))
    if not found:
        pytest.fail("PostgreSQL's server is not installed: `make test` installs it (make postgresql)")
    return found[-1]


def as_postgres(*command, timeout=60):
    """PostgreSQL's server refuses to run as root: run it as the `postgres` user the package creates."""
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *command], capture_output=True, text=True, timeout=timeout, check=True
    )


@pytest.fixture(scope="module")
@needs("database")
def postgres():
    """A PostgreSQL server of the tests' own: a temporary data folder, a free
    port on 127.0.0.1, a password; stopped and deleted at the end."""
    folder = Path(tempfile.mkdtemp(prefix="diabetes-pg-"))
    shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    password_file = folder / "password"
    password_file.write_text(PASSWORD + "\n")
    shutil.chown(password_file, "postgres", "postgres")
    as_postgres(
        postgres_bin("initdb"),
        "-D",
        str(data),
        "-U",
        "postgres",
        "--auth=scram-sha-256",
        f"--pwfile={password_file}",
        "--no-sync",
    )
    try:
        as_postgres(
            postgres_bin("pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(folder / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={folder}",
            "start",
        )
        url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        yield {"url": url, "port": port}
    finally:
        if (data / "postmaster.pid").exists():
            as_postgres(postgres_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop")
        shutil.rmtree(folder)


@pytest.mark.model
@pytest.mark.database
def test_training_from_postgresql_gives_the_model_and_metrics_of_the_csv(trained, postgres, tmp_path, monkeypatch):
    # The password comes from libpq's environment, never from a file or the URL.
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    write_table(read_training_data(str(CSV)).rows, postgres["url"])
    with psycopg.connect(
        host="127.0.0.1", port=postgres["port"], user="postgres", dbname="postgres", connect_timeout=10
    ) as connection:
        types = dict(
            connection.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'pima_diabetes'"
            ).fetchall()
        )
    assert types["glucose"] == "double precision" and types["class_var"] == "bigint"

    train_from(tmp_path, f"data_url: {postgres['url']}\n", env=clean_environment(PGPASSWORD=PASSWORD))

    version = (tmp_path / "models" / "latest").resolve()
    metadata = assert_same_model(version, (trained["models_dir"] / "latest").resolve())
    assert metadata["data"]["source"] == postgres["url"]
    for record in ("metadata.json", "train.ipynb", "train.html"):
        assert PASSWORD not in (version / record).read_text()


@pytest.mark.database
def test_a_wrong_password_is_refused_with_the_servers_reason(postgres, tmp_path):
    with pytest.raises(DataSourceError, match="password authentication failed"):
        started = time.monotonic()
        read_training_data(postgres["url"].replace("postgres@", "postgres:wrong@"))
    assert time.monotonic() - started < 30
