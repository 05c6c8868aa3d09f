"""Merge finished catalogues, such as the shards of a sharded ``predict`` run, into one.

Three steps, cheapest first. Each collects every problem it finds before refusing, one line
per kind of problem with up to ten examples, so that one try shows what to fix:

1. The parts' headers and the directories beside them, never their rows: parts that cannot be
   read, unfinished parts (a run's journal beside them), parts of different runs (model,
   preprocessing, exposures, flag rule, kind of σ, sharding) and, with ``shards``, missing or
   repeated shards. A refusal here costs no pass over the rows.
2. One pass over the resume key's columns (``path``, ``extname_blue``, ``extname_red``; for a
   FITS output every text column, whose longest values size the FITS columns): a 64-bit hash
   of each row's key goes into a sorted array per part. Rows repeated within or across parts
   are found with 8 bytes a row, 16 while the parts' arrays are merged (a Python set of the
   keys would take over 100: docs/performance.md).
3. The copy: the parts' rows, in bounded batches and in order, through
   :func:`~lamost_rrnet.catalogue.write_catalogue`, which writes atomically.

Rows are copied, not converted: in FITS and Parquet every value keeps its bits, NaN payloads
included; CSV keeps the values (every NaN is written ``nan``).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lamost_rrnet.catalogue import (
    JOURNAL_SUFFIX,
    KEY_COLUMNS,
    SHARD_KEYS,
    CatalogueInfo,
    CatalogueSchema,
    catalogue_info,
    check_header,
    journal_dir,
    output_format,
    read_batches,
    recorded_run,
    remove_leftovers,
    run_directories,
    string_widths,
    write_catalogue,
)
from lamost_rrnet.errors import CatalogueError, OutputExistsError
from lamost_rrnet.identity import contains, text_hashes
from lamost_rrnet.locking import exclusive
from lamost_rrnet.progress import make_progress
from lamost_rrnet.table_io import CATALOGUE_ENDINGS, format_of

MAX_EXAMPLES = 10
_PART_FORMATS = ("fits", "parquet")  # a CSV catalogue records no header to check
_KEY_SEPARATOR = "\x00"  # in no escaped path and no FITS text: joined keys stay distinct
_SHARDALG, _SHARD, _NSHARDS = SHARD_KEYS


@dataclass
class MergeSummary:
    """What a merge did."""

    output: str
    parts: int
    rows: int
    seconds: float = 0.0

    def text(self) -> str:
        return (
            f"{self.rows} rows from {self.parts} parts merged into {self.output} "
            f"({self.seconds:.1f} s)"
        )


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _show(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, Mapping):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _and(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


class _Problems:
    """The lines of a refusal: one per kind of problem, its count and a few examples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, total: int, what: str, examples: Sequence[str], sep: str = ", ") -> None:
        if total:
            shown = sep.join(examples[:MAX_EXAMPLES])
            more = f"{sep}..." if total > min(len(examples), MAX_EXAMPLES) else ""
            self.lines.append(f"{what}: {shown}{more}")

    def raise_any(self) -> None:
        if self.lines:
            raise CatalogueError("\n".join(self.lines))


# ---------------------------------------------------------------------------------------------
# Step 1: the parts and their headers


def _is_part(path: Path) -> bool:
    return format_of(path, CATALOGUE_ENDINGS) in _PART_FORMATS


def _find_parts(
    arguments: Iterable[str | os.PathLike[str]], output: str | os.PathLike[str]
) -> tuple[list[Path], list[Path]]:
    """The part files that ``arguments`` name, a directory giving its *.fits and *.parquet
    files, sorted, but ``output``; and the catalogues in those directories that were never
    written, only their run's journal (a run killed before its end)."""
    target = os.path.abspath(output)
    files: list[Path] = []
    unwritten: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if not path.is_dir():
            files.append(path)
            continue
        for entry in sorted(path.iterdir()):
            if os.path.abspath(entry) == target:
                continue
            if _is_part(entry) and entry.is_file():
                files.append(entry)
            elif entry.name.endswith(JOURNAL_SUFFIX) and entry.is_dir():
                part = entry.with_name(entry.name[: -len(JOURNAL_SUFFIX)])
                if _is_part(part) and not part.exists() and os.path.abspath(part) != target:
                    unwritten.append(part)
    return files, unwritten


def _settings(info: CatalogueInfo) -> dict[str, object]:
    """What must be the same in every part, by the words a refusal uses for it."""
    run = recorded_run(info)
    return {
        "model (MODEL@MODELVER)": run["model"],
        "preprocessing (PREPROC)": info.header.get("PREPROC"),
        "exposure setting (EXPOSURE)": run["exposures"],
        "flag rule (FLAG*)": run["flag"],
        "kind of sigma (SIGMA)": run["sigma"],
        "shard algorithm (SHARDALG)": info.header.get(_SHARDALG),
        "shard count (NSHARDS)": info.header.get(_NSHARDS),
    }


def _read_headers(
    paths: Sequence[Path], problems: _Problems
) -> tuple[list[CatalogueInfo], list[dict[str, object]], CatalogueSchema | None]:
    """The parts that are readable catalogues, their settings and the first one's columns."""
    infos, settings, unreadable = [], [], []
    schema = None
    other_columns = []
    for path in paths:
        try:
            if not _is_part(path):
                raise CatalogueError(f"{path}: not a .fits or .parquet catalogue")
            info = catalogue_info(path)
            try:
                part_schema = CatalogueSchema.from_columns(info.columns)
            except ValueError as exc:
                raise CatalogueError(f"{path}: {exc}") from exc
            part_settings = _settings(info)
        except CatalogueError as exc:
            unreadable.append(str(exc))
            continue
        except (OSError, ValueError, KeyError) as exc:
            unreadable.append(f"{path}: {getattr(exc, 'strerror', None) or exc}")
            continue
        schema = schema or part_schema
        if part_schema != schema:
            other_columns.append(str(path))
            continue
        infos.append(info)
        settings.append(part_settings)
    problems.add(
        len(unreadable), f"{_count(len(unreadable), 'part')} not readable", unreadable, sep="; "
    )
    if other_columns:
        what = f"{_count(len(other_columns), 'part')} with other columns (labels) than"
        problems.add(len(other_columns), f"{what} {infos[0].path}", other_columns)
    return infos, settings, schema


def _check_settings(
    infos: Sequence[CatalogueInfo],
    settings: Sequence[Mapping[str, object]],
    shards: int | None,
    problems: _Problems,
) -> None:
    for what, first in settings[0].items():
        reference = f"{infos[0].path} ({_show(first)})"
        if shards is not None and what.startswith("shard count"):
            first, reference = shards, f"the {shards} asked for"
        odd = [
            f"{info.path} ({_show(s[what])})"
            for info, s in zip(infos, settings, strict=True)
            if s[what] != first
        ]
        line = f"{_count(len(odd), 'part')} with another {what} than {reference}"
        problems.add(len(odd), line, odd)


def _check_shards(infos: Sequence[CatalogueInfo], shards: int, problems: _Problems) -> None:
    """Each shard 0 to ``shards`` - 1 in exactly one part."""
    owners: dict[int, list[str]] = {}
    unsharded, outside = [], []
    for info in infos:
        shard = info.header.get(_SHARD)
        if not isinstance(shard, int) or isinstance(shard, bool):
            unsharded.append(str(info.path))
        elif not 0 <= shard < shards:
            outside.append(f"{info.path} ({shard})")
        else:
            owners.setdefault(shard, []).append(str(info.path))
    problems.add(
        len(unsharded), f"{_count(len(unsharded), 'part')} without a shard index (SHARD)", unsharded
    )
    problems.add(
        len(outside), f"{_count(len(outside), 'part')} with a shard outside 0-{shards - 1}", outside
    )
    repeated = [f"{k} ({_and(names)})" for k, names in sorted(owners.items()) if len(names) > 1]
    problems.add(len(repeated), f"{_count(len(repeated), 'shard')} in more than one part", repeated)
    missing = np.setdiff1d(np.arange(shards), np.fromiter(owners, np.int64, len(owners)))
    what = f"{_count(missing.size, 'missing shard')} of {shards}"
    problems.add(missing.size, what, [str(k) for k in missing[:MAX_EXAMPLES].tolist()])


def _merged_header(infos: Sequence[CatalogueInfo]) -> dict[str, tuple[object, str]]:
    """The header of the merge of ``infos``: every key whose value all of them share, in the
    first one's order, but the shard index and the date; then a new DATE and NMERGED."""
    header: dict[str, tuple[object, str]] = {}
    for key, value in infos[0].header.items():
        if key in (_SHARD, "DATE", "NMERGED"):
            continue
        if all(key in info.header and info.header[key] == value for info in infos):
            comment = next((info.comments[key] for info in infos if info.comments.get(key)), "")
            header[key] = (value, comment)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    header["DATE"] = (now, "UTC creation time")
    header["NMERGED"] = (len(infos), "catalogues merged into this one")
    return header


# ---------------------------------------------------------------------------------------------
# Step 2: repeated rows, by the hashes of their keys


@dataclass
class _Keys:
    """Each part's sorted, unique key hashes; the hashes repeated within each part; and the
    longest value of each text column read."""

    hashes: list[np.ndarray]
    repeated: list[np.ndarray]
    widths: dict[str, int]


def _key_hashes(batch: pa.Table) -> np.ndarray:
    keys = pc.binary_join_element_wise(*(batch[c] for c in KEY_COLUMNS), _KEY_SEPARATOR)
    return text_hashes(keys.to_pylist())


def _scan_keys(
    infos: Sequence[CatalogueInfo],
    schema: CatalogueSchema,
    columns: Sequence[str],
    advance: Callable[[int], None],
) -> _Keys:
    keys = _Keys([], [], {})
    for info in infos:
        chunks = []
        for batch in read_batches(info.path, schema, columns):
            chunks.append(_key_hashes(batch))
            for name, width in string_widths(batch).items():
                keys.widths[name] = max(keys.widths.get(name, 0), width)
            advance(batch.num_rows)
        hashes = np.concatenate(chunks) if chunks else np.empty(0, np.uint64)
        del chunks
        hashes.sort()
        first = np.ones(hashes.size, bool)
        first[1:] = hashes[1:] != hashes[:-1]
        keys.repeated.append(np.unique(hashes[~first]))
        keys.hashes.append(hashes[first])
    return keys


def _key_texts(info: CatalogueInfo, schema: CatalogueSchema, wanted: np.ndarray) -> dict[int, str]:
    """The keys, as text, of the rows of a part whose hashes are in ``wanted`` (sorted)."""
    texts = {}
    for batch in read_batches(info.path, schema, KEY_COLUMNS):
        hashes = _key_hashes(batch)
        for i in np.flatnonzero(contains(wanted, hashes)).tolist():
            path, blue, red = (batch[c][i].as_py() for c in KEY_COLUMNS)
            texts[int(hashes[i])] = f"{path} [{blue}/{red}]"
    return texts


def _check_repeats(
    infos: Sequence[CatalogueInfo], schema: CatalogueSchema, keys: _Keys, problems: _Problems
) -> None:
    merged = np.concatenate(keys.hashes)
    merged.sort()
    across = np.unique(merged[1:][merged[1:] == merged[:-1]])
    del merged
    within = [(i, h) for i, rep in enumerate(keys.repeated) for h in rep[:MAX_EXAMPLES].tolist()]
    within = within[:MAX_EXAMPLES]
    examples = across[:MAX_EXAMPLES]
    held = np.array([contains(hashes, examples) for hashes in keys.hashes])  # part x example
    shared = [(h, np.flatnonzero(held[:, j]).tolist()) for j, h in enumerate(examples.tolist())]
    if not within and not shared:
        return
    # Texts are not kept in the pass (they would cost far more than the hashes): the few
    # examples are looked up again, in the parts that hold them.
    wanted: dict[int, list[int]] = {}
    for i, h in within:
        wanted.setdefault(i, []).append(h)
    for h, holders in shared:
        wanted.setdefault(holders[0], []).append(h)
    texts: dict[int, str] = {}
    for i, hashes in wanted.items():
        texts.update(_key_texts(infos[i], schema, np.unique(np.array(hashes, np.uint64))))
    n_within = sum(rep.size for rep in keys.repeated)
    problems.add(
        n_within,
        f"{_count(n_within, 'duplicate identity', 'duplicate identities')} within parts",
        [f"{texts[h]} more than once in {infos[i].path}" for i, h in within],
    )
    problems.add(
        across.size,
        f"{_count(across.size, 'duplicate identity', 'duplicate identities')} across parts",
        [f"{texts[h]} in {_and([str(infos[i].path) for i in holders])}" for h, holders in shared],
    )


# ---------------------------------------------------------------------------------------------
# Step 3: the copy


def _copy(
    infos: Sequence[CatalogueInfo], schema: CatalogueSchema, advance: Callable[[int], None]
) -> Iterator[pa.Table]:
    for info in infos:
        for batch in read_batches(info.path, schema):
            advance(batch.num_rows)
            yield batch


def _refuse_existing(output: Path, overwrite: bool) -> None:
    if overwrite:
        return
    if output.exists():
        raise OutputExistsError(f"{output}: already exists: use --overwrite to replace it")
    if journal_dir(output).exists():
        raise OutputExistsError(
            f"{journal_dir(output)}: an unfinished predict run on this output left its "
            "journal: use --overwrite to replace both"
        )


def merge_catalogues(
    parts: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    shards: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> MergeSummary:
    """Merge finished FITS or Parquet catalogues into one ``output`` (.fits, .csv or .parquet).

    ``parts`` are catalogue files or directories of them (their *.fits and *.parquet files,
    sorted by name; ``output`` is never a part). The rows are copied, part after part, in the
    parts' order, without any change. The parts must be finished (no run's journal beside
    them), made by one model with the same preprocessing, exposure setting, flag rule, kind of
    σ and sharding, and hold each row key (path, extname_blue, extname_red) once between them;
    with ``shards`` each shard 0 to ``shards`` - 1 must be in exactly one part. Otherwise
    :class:`~lamost_rrnet.errors.CatalogueError` is raised, one line per kind of problem.

    The output's header is the one the parts share, without SHARD, with a new DATE and NMERGED
    (the number of parts). An existing output raises
    :class:`~lamost_rrnet.errors.OutputExistsError` unless ``overwrite``; it is replaced only
    once the merge is complete. ``progress`` shows bars of the rows checked and written.
    """
    started = time.perf_counter()
    if shards is not None and shards < 1:
        raise ValueError(f"shards must be at least 1, not {shards}")
    if str(output) == "-":
        raise ValueError("merge writes an output file, not stdout")
    fmt = output_format(output)
    output = Path(output)
    arguments = [parts] if isinstance(parts, (str, os.PathLike)) else list(parts)
    # Held for the whole merge, as predict holds it: one writer per output.
    with exclusive(output):
        _refuse_existing(output, overwrite)
        remove_leftovers(output)
        paths, unwritten = _find_parts(arguments, output)
        if not paths:
            where = ", ".join(os.fspath(a) for a in arguments) or "nothing"
            raise CatalogueError(f"no parts to merge: no .fits or .parquet catalogue in {where}")

        problems = _Problems()
        unfinished = [str(p) for p in unwritten]
        unfinished += [str(p) for p in paths if any(d.exists() for d in run_directories(p))]
        what = "unfinished (a run's journal is beside them: let it end, or --resume it)"
        problems.add(len(unfinished), f"{_count(len(unfinished), 'part')} {what}", unfinished)
        infos, settings, schema = _read_headers(paths, problems)
        if infos:
            _check_settings(infos, settings, shards, problems)
            if shards is not None:
                _check_shards(infos, shards, problems)
        problems.raise_any()
        header = _merged_header(infos)
        if fmt == "fits":
            check_header(header)

        n_rows = sum(info.n_rows for info in infos)
        text = [c.name for c in schema.columns if c.dtype == "str"]
        bar = make_progress(progress)
        with bar:
            checking = bar.add_task("check keys", total=n_rows)
            columns = text if fmt == "fits" else KEY_COLUMNS
            keys = _scan_keys(infos, schema, columns, lambda n: bar.advance(checking, n))
            _check_repeats(infos, schema, keys, problems)
            problems.raise_any()
            widths = keys.widths
            del keys  # the hashes: 8 bytes a row, not needed for the copy
            copying = bar.add_task("merge", total=n_rows)
            rows = _copy(infos, schema, lambda n: bar.advance(copying, n))
            write_catalogue(output, schema, rows, n_rows, widths, header)
        if overwrite:
            # A journal left by an earlier predict run on this name would, resumed, replace
            # the merge: --overwrite discards it, as predict's does.
            shutil.rmtree(journal_dir(output), ignore_errors=True)
    summary = MergeSummary(os.fspath(output), len(infos), n_rows)
    summary.seconds = time.perf_counter() - started
    return summary
