"""Table formats: .parquet and .csv files read in batches through pyarrow, one record per row."""
from __future__ import annotations

import csv
import json
from typing import Any, Iterable, Iterator

from prep.readers import FIELDS, Bad, DataError, Source, first_line


def record_columns(source: Source, names: Iterable[str]) -> list[str]:
    """The record columns a table source provides; a table without them is unusable."""
    names = list(names)
    found = [n for n in FIELDS if n in names]
    if not {"messages", "conversations"} & set(found) and not {"instruction", "output"} <= set(found):
        raise DataError(
            f"{source.name}: no usable columns (found: {', '.join(names) or 'none'}); expected "
            "Alpaca columns instruction, input (optional), output, or a chat column messages "
            "(or ShareGPT's conversations). Rename the columns.",
            reason="missing_field",
        )
    return found


def parquet_records(source: Source, batch_size: int) -> Iterator[tuple[int, int | None, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert source.path is not None
    try:
        parquet = pq.ParquetFile(source.path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(
            f"{source.name}: not a readable Parquet file ({first_line(e)}); re-export it "
            "(e.g. pandas DataFrame.to_parquet) or use .jsonl.",
            reason="unreadable_file",
        ) from e
    with parquet:
        if parquet.metadata.num_rows == 0:
            raise DataError(f"{source.name}: the table has zero rows (no records).", reason="no_records")
        # Read only the record columns: extra columns can be large and are ignored anyway.
        columns = record_columns(source, parquet.schema_arrow.names)
        index = 0
        try:
            for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
                for record in batch.to_pylist():
                    yield index, None, record
                    index += 1
        except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
            raise DataError(
                f"{source.name}: cannot read past record {index}: {first_line(e)}. "
                "The file is damaged; re-export it.",
                reason="unreadable_file",
            ) from e


def csv_records(source: Source, batch_size: int) -> Iterator[tuple[int, int | None, Any]]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    assert source.path is not None
    # The header is read first so every column can be typed as bytes: type
    # inference would turn an all-digit column into int64 and fail on a later
    # block, and bytes let one badly encoded cell be one bad record.
    try:
        with open(source.path, "rb") as f:
            # Decoded line by line: text mode decodes whole buffers, so a bad
            # byte in a later row would wrongly fail the header.
            lines = (raw.decode("utf-8-sig" if i == 0 else "utf-8") for i, raw in enumerate(f))
            header = next(csv.reader(lines), [])
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(
            f"{source.name}: cannot read the header row ({first_line(e)}); save the file as UTF-8 CSV.",
            reason="unreadable_file",
        ) from e
    if not any(h.strip() for h in header):
        raise DataError(f"{source.name}: empty file (no header row, no records).", reason="empty_file")
    columns = record_columns(source, header)
    options = pacsv.ConvertOptions(
        column_types={name: pa.binary() for name in header},
        include_columns=columns,
        strings_can_be_null=False,  # an empty cell is "", not null
    )
    # Rows can span lines (quoted newlines), so CSV records carry an index, no line.
    index = 0
    try:
        reader = pacsv.open_csv(
            source.path,
            read_options=pacsv.ReadOptions(block_size=1 << 20),
            convert_options=options,
        )
        for batch in reader:
            for rec in batch.to_pylist():
                yield index, None, _decode_csv_row(rec)
                index += 1
    except pa.ArrowException as e:
        raise DataError(
            f"{source.name}: CSV error at record {index}: {first_line(e)}. Fix the CSV "
            "(every row needs as many fields as the header; quote fields with commas or newlines).",
            reason="unreadable_file",
        ) from e
    if index == 0:
        raise DataError(f"{source.name}: a header row but no records.", reason="no_records")


def _decode_csv_row(rec: dict[str, bytes | None]) -> dict[str, Any] | Bad:
    row: dict[str, Any] = {}
    for key, value in rec.items():
        if value is None:
            row[key] = None
            continue
        try:
            row[key] = value.decode("utf-8")
        except UnicodeDecodeError as e:
            return Bad(
                "undecodable_bytes",
                f"field '{key}' has invalid UTF-8 byte 0x{value[e.start]:02x} at byte {e.start + 1}; "
                "re-save the file as UTF-8",
            )
    for key in ("messages", "conversations"):
        if isinstance(row.get(key), str):
            # A CSV cell is flat text, so a chat record's turns arrive as JSON.
            try:
                row[key] = json.loads(row[key])
            except json.JSONDecodeError as e:
                return Bad("malformed_json", f"field '{key}' is not valid JSON: {e}")
    return row
