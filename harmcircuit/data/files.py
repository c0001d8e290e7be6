"""Read JSONL and CSV files into records that remember their line numbers.

Every error names the file, the line and the field, so that a malformed row in a user's file
can be found and fixed without a debugger.
"""

import csv
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harmcircuit.data.prompts import DataError, Example, PromptSet

logger = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".jsonl", ".csv")


@dataclass(frozen=True)
class Record:
    """One row of a data file: its fields and the 1-based line on which it starts."""

    path: Path
    line: int
    fields: dict[str, object]

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def read_jsonl(path: str | os.PathLike[str]) -> list[Record]:
    """Read one JSON object per line, skipping blank lines."""
    path = Path(path)
    records = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{path}:{number}: invalid JSON ({error.msg}); each line must be one JSON object"
            ) from None
        if not isinstance(value, dict):
            raise DataError(
                f"{path}:{number}: expected a JSON object, got {type(value).__name__}; "
                'each line must be one JSON object such as {"prompt": "..."}'
            )
        records.append(Record(path, number, value))
    return records


def read_csv(path: str | os.PathLike[str]) -> list[Record]:
    """Read a CSV file with a header row into string values, skipping blank lines."""
    path = Path(path)
    text = _read_text(path)
    reader = csv.reader(text.splitlines(keepends=True))
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as error:
        raise DataError(f"{path}:1: invalid CSV header ({error})") from None
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise DataError(f"{path}:1: duplicate CSV columns {duplicates}; rename them")

    records = []
    previous_end = reader.line_num
    while True:
        start = previous_end + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            raise DataError(f"{path}:{start}: invalid CSV row ({error})") from None
        previous_end = reader.line_num
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(
                f"{path}:{start}: row has {len(row)} values but the header has {len(header)} "
                f"columns {header}; quote values that contain commas"
            )
        records.append(Record(path, start, dict(zip(header, row, strict=True))))
    return records


def read_records(path: str | os.PathLike[str]) -> list[Record]:
    """Read a ``.jsonl`` or ``.csv`` file, chosen by its suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".csv":
        return read_csv(path)
    raise DataError(
        f"unsupported data file {path}: the suffix must be one of {list(SUPPORTED_SUFFIXES)}"
    )


def require_text(record: Record, field: str) -> str:
    """Return a non-empty string field of a record, or raise naming the file, line and field."""
    if field not in record.fields:
        present = sorted(record.fields)
        raise DataError(
            f"{record.where()}: field {field!r} is missing (fields present: {present}); "
            "fix the row or choose the field name with the matching option"
        )
    value = record.fields[field]
    if not isinstance(value, str):
        raise DataError(
            f"{record.where()}: field {field!r} must be a string, got {type(value).__name__}"
        )
    if not value.strip():
        raise DataError(f"{record.where()}: field {field!r} is empty")
    return value


def require_id(record: Record, field: str) -> str:
    """Return an id field as a string, converting JSON integers."""
    value = record.fields.get(field)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return require_text(record, field)


def content_ids(prefix: str, keys: Iterable[tuple[str, ...]]) -> list[str]:
    """Derive stable ids from content: ``{prefix}-{12 hex digits of SHA-256}``.

    A repeated key gets ``-2``, ``-3`` and so on in order of appearance, so ids stay unique
    even where a file repeats a row.
    """
    ids = []
    seen: dict[str, int] = {}
    for key in keys:
        digest = hashlib.sha256("\x1f".join(key).encode()).hexdigest()[:12]
        base = f"{prefix}-{digest}"
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return ids


def prompt_set_from_file(
    path: str | os.PathLike[str],
    *,
    prompt_field: str = "prompt",
    response_field: str | None = None,
    category_field: str | None = None,
    id_field: str | None = None,
) -> PromptSet:
    """Read a user's ``.jsonl`` or ``.csv`` file into a prompt set named after the file.

    Every named field must be a non-empty string on every row. Without ``id_field``, ids
    derive from the prompt and response text, so they survive reordering of the file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data file {path} not found; pass an existing .jsonl or .csv file")
    records = read_records(path)
    if not records:
        raise DataError(f"data file {path} contains no rows; add at least one example")

    prompts = [require_text(record, prompt_field) for record in records]
    responses: list[str | None] = [None] * len(records)
    if response_field is not None:
        responses = [require_text(record, response_field) for record in records]
    categories: list[str | None] = [None] * len(records)
    if category_field is not None:
        categories = [require_text(record, category_field) for record in records]

    if id_field is not None:
        ids = [require_id(record, id_field) for record in records]
        first_line: dict[str, int] = {}
        for record, example_id in zip(records, ids, strict=True):
            if example_id in first_line:
                raise DataError(
                    f"{record.where()}: field {id_field!r} repeats the id {example_id!r} "
                    f"of line {first_line[example_id]}; ids must be unique"
                )
            first_line[example_id] = record.line
    else:
        keys = (
            (prompt, response or "") for prompt, response in zip(prompts, responses, strict=True)
        )
        ids = content_ids(path.stem, keys)

    source = f"file:{path.name}"
    examples = [
        Example(id=i, prompt=p, response=r, category=c, source=source)
        for i, p, r, c in zip(ids, prompts, responses, categories, strict=True)
    ]
    logger.info("read %d examples from %s", len(examples), path)
    return PromptSet(examples, name=path.stem)


def _read_text(path: Path) -> str:
    try:
        # utf-8-sig drops the byte-order mark that spreadsheet programs write at the start.
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: not valid UTF-8 at byte {error.start}; save the file as UTF-8"
        ) from None
    except OSError as error:
        raise DataError(f"failed to read data file {path}: {error.strerror}") from None
