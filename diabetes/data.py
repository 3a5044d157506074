"""The training data: read from a CSV file or any SQL database, checked, and
named by a hash of its rows.

`data_url` is a file path (the CSV of the data set: no header, 8 features then
the label) or a SQLAlchemy URL (`sqlite:///build/diabetes.sqlite`,
`postgresql+psycopg://user@host:5432/db`); `data_query` is the SQL run against
a database (by default the table that `make db` writes, in file order). A
URL's credentials are recorded and shown only redacted, and may be named by
reference (`${NAME}`, `${file:PATH}`), expanded only here, where it connects
(diabetes/credentials.py).

Whatever the source, the rows are brought to one canonical form: the feature
columns then the label, in `FEATURE_NAMES` order, as CSV with a header, each
feature written as Python writes a float and the label as an integer. Its
sha256 names the data a model learned from: the same rows give the same hash
from a file, SQLite or PostgreSQL, and a changed table gives another one. The
canonical text is also the snapshot a model version keeps (`data.csv`), so
`sha256sum data.csv` shows the hash in the metadata.

    python -m diabetes.data load CSV_PATH URL [--table NAME]   (what `make db` runs)
"""

import argparse
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from diabetes.credentials import CredentialError, connect_url, redacted, scrubbed
from diabetes.features import FEATURE_NAMES, LABEL_NAME

COLUMNS = (*FEATURE_NAMES, LABEL_NAME)
# The table `make db` writes: the CSV's rows with their line number, so that a
# query can read them back in the file's order (SQL tables have none).
TABLE = "pima_diabetes"
ROW_ID = "row_id"
DEFAULT_QUERY = f"SELECT * FROM {TABLE} ORDER BY {ROW_ID}"
# Up to this many rows a model version keeps a copy of its data (768 rows are
# 23 kB); above it, only the hash, and the metadata says so.
SNAPSHOT_MAX_ROWS = 1_000_000


class DataSourceError(Exception):
    """The training data cannot be read or is not what the model needs; the
    message says which source, and what is wrong."""


@dataclass(frozen=True)
class TrainingData:
    rows: pd.DataFrame  # COLUMNS: features as float64 (NaN for SQL NULL), the label as int
    source: str  # the file path, or the URL with its credentials redacted
    query: str | None  # the SQL, for a database
    canonical: bytes  # the rows in canonical form (see the module's docstring)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.canonical).hexdigest()

    def provenance(self) -> dict:
        """What a model's metadata records about the data it learned from."""
        keeps_snapshot = len(self.rows) <= SNAPSHOT_MAX_ROWS
        return {
            "source": self.source,
            "query": self.query,
            "rows": len(self.rows),
            "sha256": self.sha256,
            "canonical_form": "CSV with header, columns "
            + ",".join(COLUMNS)
            + "; features as Python float repr, label as integer",
            "snapshot": "data.csv" if keeps_snapshot else None,
            "snapshot_note": None
            if keeps_snapshot
            else f"{len(self.rows)} rows (over {SNAPSHOT_MAX_ROWS}): no copy kept; the sha256 names the rows",
        }

    def write_snapshot(self, path):
        Path(path).write_bytes(self.canonical)


def is_database_url(data_url: str) -> bool:
    return "://" in data_url


def read_training_data(data_url: str, data_query: str = "") -> TrainingData:
    """Read, check and canonicalise the training rows; DataSourceError says what is wrong."""
    data_url = str(data_url)
    if is_database_url(data_url):
        query = data_query or DEFAULT_QUERY
        source = redacted(data_url)
        frame = _read_sql(data_url, source, query)
    else:
        query, source = None, data_url
        frame = _read_csv(data_url)
    rows = checked_rows(frame, source)
    return TrainingData(rows, source, query, canonical_form(rows))


def canonical_form(rows: pd.DataFrame) -> bytes:
    lines = [",".join(COLUMNS)]
    features = rows[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    for values, label in zip(features.tolist(), rows[LABEL_NAME].tolist()):
        lines.append(",".join([*map(repr, values), str(int(label))]))
    return ("\n".join(lines) + "\n").encode()


def connect_url_of(data_url: str):
    """The sqlalchemy URL to connect with, its references expanded (see
    diabetes/credentials.py); DataSourceError, holding no credential, if it
    cannot be had."""
    try:
        return connect_url(data_url)
    except CredentialError as error:
        raise DataSourceError(f"cannot connect to {redacted(data_url)}: {error}") from None
    except ValueError as error:  # not a URL SQLAlchemy can parse (its message holds no part of it)
        raise DataSourceError(
            f"data_url is not a SQLAlchemy URL ({error}): expected e.g. sqlite:///build/diabetes.sqlite or "
            "postgresql+psycopg://user@host:5432/db"
        ) from None


def _read_csv(path: str) -> pd.DataFrame:
    if not Path(path).is_file():
        raise DataSourceError(f"data file {path} does not exist (data_url: a CSV path or a SQLAlchemy URL)")
    try:
        frame = pd.read_csv(path, header=None)
    except (ValueError, OSError) as error:
        raise DataSourceError(f"cannot read {path} as CSV: {error}") from None
    if frame.shape[1] != len(COLUMNS):
        raise DataSourceError(
            f"{path} has {frame.shape[1]} columns, expected {len(COLUMNS)}: " + ", ".join(COLUMNS) + " (no header)"
        )
    frame.columns = list(COLUMNS)
    return frame


def _read_sql(data_url: str, source: str, query: str) -> pd.DataFrame:
    """The query's rows; every message names the source redacted, and a
    driver's message is scrubbed of the URL's credentials."""
    import sqlalchemy

    url = connect_url_of(data_url)
    try:
        engine = sqlalchemy.create_engine(url)
    except Exception as error:  # unknown dialect or driver, bad arguments
        raise DataSourceError(f"cannot use {source}: {error.__class__.__name__}: {scrubbed(str(error), url)}") from None
    try:
        with engine.connect() as connection:
            try:
                return pd.read_sql_query(sqlalchemy.text(query), connection)
            except (sqlalchemy.exc.SQLAlchemyError, pd.errors.DatabaseError) as error:
                cause = getattr(error.__cause__, "orig", error.__cause__) or error
                raise DataSourceError(
                    f"the query failed on {source}: {_first_line(cause, url)}\n  query: {query}"
                ) from None
    except sqlalchemy.exc.DBAPIError as error:
        raise DataSourceError(f"cannot connect to {source}: {_first_line(error.orig, url)}") from None
    finally:
        engine.dispose()


def _first_line(error, url) -> str:
    text = scrubbed(str(error).strip(), url)
    return text.splitlines()[0] if text else error.__class__.__name__


def checked_rows(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """The frame's COLUMNS, the features as float64 and the label as 0/1 int64;
    DataSourceError names the source and what is wrong. Training in process
    checks the whole frame, on a cluster each partition where it is read."""
    missing = [name for name in COLUMNS if name not in frame.columns]
    if missing:
        raise DataSourceError(
            f"the rows from {source} lack column(s) {', '.join(missing)}; "
            f"they have {', '.join(map(str, frame.columns))}"
        )
    if frame.empty:
        raise DataSourceError(f"no rows from {source}")
    checked = {}
    for name in COLUMNS:
        values = pd.to_numeric(frame[name], errors="coerce")
        wrong = values.isna() & frame[name].notna()
        if wrong.any():
            row = int(np.flatnonzero(wrong.to_numpy())[0])
            raise DataSourceError(
                f"column {name} from {source} holds non-numbers, e.g. "
                f"{frame[name].iloc[row]!r} in row {row} ({int(wrong.sum())} in all)"
            )
        checked[name] = values.astype(np.float64)
    label = checked[LABEL_NAME]
    if label.isna().any() or not label.isin([0, 1]).all():
        bad = label[~label.isin([0, 1])]
        raise DataSourceError(
            f"column {LABEL_NAME} from {source} must be 0 or 1 in every row, found "
            f"{bad.iloc[0]!r} in row {int(bad.index[0])} ({len(bad)} in all)"
        )
    checked[LABEL_NAME] = label.astype(np.int64)
    return pd.DataFrame(checked)


def write_table(rows: pd.DataFrame, data_url: str, table: str = TABLE):
    """Write the rows to a database table (replacing it), with their line
    number as `row_id`: what `make db` and the tests' PostgreSQL do."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(connect_url_of(data_url))
    try:
        with engine.begin() as connection:
            rows.rename_axis(ROW_ID).reset_index().to_sql(table, connection, if_exists="replace", index=False)
    finally:
        engine.dispose()


def main(argv) -> int:
    parser = argparse.ArgumentParser(description="Load the data set's CSV into a database table.")
    parser.add_argument("command", choices=["load"])
    parser.add_argument("csv_path")
    parser.add_argument("url", help="a SQLAlchemy URL, e.g. sqlite:///build/diabetes.sqlite")
    parser.add_argument("--table", default=TABLE)
    args = parser.parse_args(argv)
    try:
        data = read_training_data(args.csv_path)
    except DataSourceError as error:
        parser.exit(1, f"{error}\n")
    write_table(data.rows, args.url, args.table)
    print(f"{len(data.rows)} rows from {args.csv_path} in table {args.table} of {redacted(args.url)}", end=" ")
    print(f"(sha256 of the rows {data.sha256})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
