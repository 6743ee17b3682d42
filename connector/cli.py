"""The `optout-sync` command line: parses arguments, calls `connector.commands`, prints.

Exit codes: 0 ok, 1 a sync or runtime failure, 2 usage or settings error,
3 refused (mass-change guard, wrong confirmation count, forbidden lift),
130 interrupted during an import. A reader of stdout that closes early ends a command with 0.
"""

from __future__ import annotations

import gc
import json
import os
import select
import sys
from collections.abc import Callable
from contextlib import nullcontext
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING

import click

from state.errors import ConfigError, InputError, OptOutSyncError, RefusedError

from state.lifts import LEGAL_BASES
from state.models import REASONS

from . import __version__, commands, operator
from .logs import log_event, mask_addresses, mask_rejected, mask_value, setup_logging
from .progress import describe_progress
from .store_guard import require_store

if TYPE_CHECKING:
    from .settings import Settings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class _Seconds(click.FloatRange):
    """A non-negative number of seconds."""

    name = "number of seconds"

    def __init__(self) -> None:
        super().__init__(min=0)


class _NonNegative(click.IntRange):
    """A count: a non-negative integer; -1 is a usage error naming the option, not a count that never matches."""

    name = "integer"

    def __init__(self) -> None:
        super().__init__(min=0)


COUNT = _NonNegative()


class Context:
    """What every command needs: how to load settings and how to log."""

    def __init__(self, config: str | None, log_format: str | None, show_addresses: bool):
        self.config = config
        self.log_format = log_format
        self.show_addresses = show_addresses
        self._settings: Settings | None = None
        self.freeze_loaded = True

    def settings(self) -> Settings:
        if self._settings is None:
            # Imported here: pydantic-settings loads only for the commands that read settings.
            from .settings import load_settings, secret_file_warnings

            self._settings = load_settings(self.config, cli=self.options())
            logging_settings = self._settings.logging
            self.show_addresses = logging_settings.show_addresses
            setup_logging(logging_settings.format, logging_settings.level, self.show_addresses,
                          file=logging_settings.file)
            for warning in secret_file_warnings(self._settings):
                log_event("insecure_settings_file", 30, message=warning)
            # What is loaded by now (modules, settings models) lives as long as the command: out of
            # the collector's sight, so that its full collections, which a million-row import or
            # reconcile sets off many times, do not scan it each time (an import of 900,000 new:
            # collector time 0.21 -> 0.09 s). `_edge` gives it back when the command ends.
            if self.freeze_loaded:
                gc.freeze()
        return self._settings

    def options(self) -> dict:
        """The command-line options given that are settings (the strongest source of `Settings`)."""
        return {**({"--log-format": self.log_format} if self.log_format else {}),
                **({"--show-addresses": True} if self.show_addresses else {})}

    def shown(self, text: str) -> str:
        """Text for the terminal, with addresses masked unless asked otherwise."""
        return text if self.show_addresses else mask_addresses(text)

    def shown_rejected(self, text: str, value: str | None) -> str:
        """Text about a rejected input value, with that value masked as a whole unless asked otherwise."""
        return text if self.show_addresses else mask_rejected(text, value)


def _edge(function: Callable) -> Callable:
    """Turn the project's errors into messages and exit codes; nothing else is caught."""

    @wraps(function)
    def wrapper(*args, **kwargs):
        try:
            try:
                outcome = function(*args, **kwargs)
            except SystemExit:
                _flush_stdout()  # keep the command's own exit code, also when the reader has gone
                raise
            _flush_stdout()
            return outcome
        except BrokenPipeError:
            if not _stdout_closed():
                raise
            # The reader of our output closed early (`export | head -1`): done, as Unix tools are.
            _silence_stdout()
            sys.exit(EXIT_OK)
        except operator.ImportInterrupted as exc:
            click.echo("interrupted after the import was saved: "
                       f"{exc.saved:,} new opt-outs" if exc.saved else "interrupted; nothing was changed", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except RefusedError as exc:
            click.echo(f"refused: {exc}", err=True)
            sys.exit(EXIT_REFUSED)
        except InputError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except OptOutSyncError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_FAILURE)
        finally:
            gc.unfreeze()  # what Context.settings froze (nothing, if the command read no settings)

    return wrapper


def _stdout_closed() -> bool:
    """True when stdout is a pipe whose reader has closed it."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing what is left at exit does not complain."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _flush_stdout() -> None:
    """Flush stdout inside the edge, where a closed pipe is handled, not at interpreter exit."""
    try:
        if sys.stdout is not None:  # None when the command was started with stdout closed (>&-)
            sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "-c", metavar="FILE", help="Settings file (else $OPTOUT_SYNC_CONFIG, else ./settings.toml).")
@click.option("--log-format", type=click.Choice(["human", "json"]), help="Log format (default: from settings).")
@click.option("--show-addresses", is_flag=True, help="Show email addresses in logs and output unmasked.")
@click.version_option(__version__, prog_name="optout-sync")
@click.pass_context
def main(ctx: click.Context, config: str | None, log_format: str | None, show_addresses: bool) -> None:
    """Keep email opt-outs in agreement across every system you mail from."""
    ctx.obj = Context(config, log_format, show_addresses)


@main.command()
@click.option("--grace", default=5.0, show_default=True, type=_Seconds(), help="Seconds to let workers finish after a stop signal.")
@click.pass_obj
@_edge
def run(obj: Context, grace: float) -> None:
    """Run the daemon: every adapter on its own interval, until SIGTERM or Ctrl-C."""
    # Imported here: the daemon brings the metrics, the status server and the HTTP stack,
    # which no other command needs.
    from .daemon import Daemon

    obj.freeze_loaded = False  # a daemon lives on: what start-up left for the collector is collected as usual
    sys.exit(Daemon(obj.settings(), grace=grace).run())


@main.command()
@click.option("--once", is_flag=True, required=True, help="Run one cycle of every adapter and exit.")
@click.option("--adapter", "names", multiple=True, metavar="NAME", help="Only this adapter (repeatable).")
@click.option("--dry-run", is_flag=True, help="Show what would be pulled and pushed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the cycle reports as JSON.")
@click.pass_obj
@_edge
def sync(obj: Context, once: bool, names: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Run one sync cycle (all pulls, then all pushes) and exit."""
    settings = obj.settings()
    for name in names:
        settings.adapter(name)
    reports = commands.sync_once(settings, list(names) or None, dry_run=dry_run, list_all=as_json)
    if as_json:
        data = [commands.report_dict(r) for r in reports]
        if not obj.show_addresses:
            for item in (i for d in data for i in d.get("would_reject", [])):
                item["reason"] = mask_rejected(item["reason"], item["value"])
                item["value"] = mask_value(item["value"])
        click.echo(obj.shown(json.dumps(data, indent=2)))
    else:
        verb = "would read" if dry_run else "read"
        for r in reports:
            # The parts add up: rows = new + duplicates + already held + ignored + rejected.
            line = (f"{r.adapter}: {verb} {r.pulled + r.rejected} rows ({r.staged} new, {r.duplicates} duplicate, "
                    f"{r.held} already held, {r.ignored} ignored, {r.rejected} rejected), "
                    f"{'would push' if dry_run else 'pushed'} {r.pushed}, failed {r.failed}, parked {r.parked}, "
                    f"skipped {r.skipped}")
            if r.released or r.removed:
                line += f"; released {r.released} and removed {r.removed} after recipients' own re-subscribes"
            if r.paused:
                line += f"; PAUSED with {r.waiting_approval} staged (optout-sync approve {r.adapter} --count {r.waiting_approval})"
            if r.error:
                line += f"; ERROR {type(r.error).__name__}: {r.error}"
            click.echo(obj.shown(line))
            if dry_run:
                _echo_dry_run_lists(obj, r)
    if any(r.error for r in reports):
        sys.exit(EXIT_FAILURE)
    if any(r.paused for r in reports):
        sys.exit(EXIT_REFUSED)


def _echo_dry_run_lists(obj: Context, report) -> None:
    """The first DRY_RUN_LIST_LIMIT new, rejected and to-be-pushed items of a dry run (all with --json)."""
    from .engine import DRY_RUN_LIST_LIMIT as shown

    def heading(label: str, total: int) -> None:
        more = f", the first {shown}; all of them with --json" if total > shown else ""
        click.echo(f"  {label} ({total}{more}):")

    for label, items, total in (("new opt-outs", report.would_add, report.staged),
                                ("would push", report.would_push, report.pushed)):
        if items:
            heading(label, max(total, len(items)))
            for o in items[:shown]:
                click.echo(obj.shown(f"    {o.address} ({'all email' if o.scope == '*' else 'topic ' + o.scope}, "
                                     f"{o.reason} by {o.origin})"))
        if label == "new opt-outs" and report.would_reject:
            heading("rejected", max(report.rejected, len(report.would_reject)))
            for item in report.would_reject[:shown]:
                click.echo(obj.shown_rejected(f"    {_rejected_text(item.where, item.value, item.reason)}",
                                              item.value))


def _rejected_text(where: str, value: str | None, message: str) -> str:
    """'where: message', with the rejected value after `where` when the message does not quote it."""
    shown = f" {value!r}" if value and value.strip() and value.strip() not in message else ""
    return f"{where}{shown}: {message}"


@main.command()
@click.argument("adapter")
@click.option("--dry-run", is_flag=True, help="Show the differences; change nothing.")
@click.pass_obj
@_edge
def reconcile(obj: Context, adapter: str, dry_run: bool) -> None:
    """Compare ADAPTER's full set with the store: ingest what it has extra, re-apply what it lacks."""
    result = commands.reconcile(obj.settings(), adapter, dry_run=dry_run)
    if isinstance(result, str):
        click.echo(result)
        return
    click.echo(f"{adapter}: read {result.pulled}, new {result.staged}, missing at source {result.missing_at_source}"
               f"{' (would re-apply)' if dry_run else f', re-applied {result.pushed}, failed {result.failed}'}")
    if result.paused:
        click.echo(f"PAUSED: {result.waiting_approval} staged; optout-sync approve {adapter} --count {result.waiting_approval}")
    if result.error:
        click.echo(f"error: {type(result.error).__name__}: {obj.shown(str(result.error))}", err=True)
        sys.exit(EXIT_FAILURE)
    if result.paused:
        sys.exit(EXIT_REFUSED)


@main.command()
@click.argument("adapter")
@click.option("--count", type=COUNT, required=True, help="The exact number of staged opt-outs shown by status.")
@click.pass_obj
@_edge
def approve(obj: Context, adapter: str, count: int) -> None:
    """Apply the opt-outs the mass-change guard is holding for ADAPTER, if COUNT matches."""
    added = commands.approve(obj.settings(), adapter, count)
    click.echo(f"{adapter}: approved; {added} opt-outs applied and the adapter resumed")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
@_edge
def status(obj: Context, as_json: bool) -> None:
    """Per adapter: last run, lag, cursor age, pending, paused, failures."""
    data = commands.status(obj.settings())
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    released = f" ({data['releases']} released where the recipient re-subscribed)" if data.get("releases") else ""
    daemons = sorted({row["holder"]["daemon_id"] for row in data["adapters"] if row.get("holder")})
    running = (describe_holder(data["daemon"]) if data.get("backend") != "postgresql" else
               f"daemons driving adapters: {', '.join(daemons)}" if daemons else "no daemon drives an adapter")
    click.echo(f"store {data['store']}: {data['suppressions']} suppressions{released}; {running}")
    for row in data["adapters"]:
        state = f"PAUSED ({row['staged']} staged; approve with --count {row['staged']})" if row["paused"] else "active"
        lag = f"{row['lag_s']:.0f}s" if row["lag_s"] is not None else "-"
        cursor = f"{row['cursor_age_s']:.0f}s" if row["cursor_age_s"] is not None else "-"
        click.echo(f"  {row['adapter']} ({row['type']}, {row['role']}): {state}; last run {row['last_run_at'] or 'never'}; "
                   f"pending {row['pending']}; lag {lag}; cursor age {cursor}; failures {row['failures']}; "
                   f"last reconcile {row['last_reconcile_at'] or 'never'}"
                   + (f"; released {row['released']}" if row.get("released") else "")
                   + ("; LAG ALARM" if row.get("lag_alarm") else ""))
        if row.get("progress"):
            click.echo(f"    {describe_progress(row['progress'])}")
        if row.get("holder") and data.get("backend") == "postgresql":
            holder = row["holder"]
            click.echo(f"    driven by {holder['daemon_id']} on {holder['host']}"
                       + (f" since {holder['since']}" if holder["since"] else ""))
        if row["last_run_error"]:
            click.echo(f"    last error: {obj.shown(row['last_run_error'])}")


def describe_holder(holder: dict | None) -> str:
    """'daemon running (pid N, since T)', or who else holds the store's lock, or 'daemon not running'."""
    if holder is None:
        return "daemon not running"
    what = "daemon running" if holder["command"] in (None, "run") else f"`{holder['command']}` running"
    facts = [f"pid {holder['pid'] or 'unknown'}"] + ([f"since {holder['started_at']}"] if holder["started_at"] else [])
    return f"{what} ({', '.join(facts)})"


@main.group(invoke_without_command=True)
@click.option("--adapter", metavar="NAME", help="Only this adapter.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@_edge
def failures(ctx: click.Context, adapter: str | None, as_json: bool) -> None:
    """List rejected input rows and failed, parked or unmapped applies (`failures dismiss` closes them)."""
    if ctx.invoked_subcommand is not None:
        return
    obj: Context = ctx.obj
    rows = commands.failures(obj.settings(), adapter)
    if as_json:
        if not obj.show_addresses:
            for row in rows:
                row["message"] = mask_rejected(row["message"], row["value"])
                row["value"] = row["value"] and mask_value(row["value"])
        click.echo(obj.shown(json.dumps(rows, indent=2)))
        return
    if not rows:
        click.echo("no open failures")
    for row in rows:
        what = row["location"] or f"{row['address']} ({row['scope']})"
        line = (f"#{row['id']}  {row['last_at']}  {row['adapter']}  {row['kind']}  "
                f"{_rejected_text(what, row['value'], row['message'])}"
                f"{'  x' + str(row['attempts']) if row['attempts'] > 1 else ''}")
        click.echo(obj.shown_rejected(line, row["value"]))


@failures.command("dismiss")
@click.argument("ids", nargs=-1, required=True, type=click.IntRange(min=1))
@click.option("--reason", required=True, help="Why the failures need no more attention (stored in the events log).")
@click.pass_obj
@_edge
def failures_dismiss(obj: Context, ids: tuple[int, ...], reason: str) -> None:
    """Close the failures with these IDs (as `failures` lists them), with a reason; each is audited."""
    rows = commands.dismiss_failures(obj.settings(), list(ids), reason)
    for row in rows:
        what = row["location"] or f"{row['address']} ({row['scope']})"
        click.echo(obj.shown_rejected(f"dismissed #{row['id']}  {row['adapter']}  {row['kind']}  {what}",
                                      row["value"]))


@main.command()
@click.option("--adapter", "names", multiple=True, metavar="NAME",
              help="Only probe this adapter's credentials and mapping (repeatable).")
@click.pass_obj
@_edge
def check(obj: Context, names: tuple[str, ...]) -> None:
    """Validate the settings and each adapter without changing anything."""
    settings = obj.settings()
    for name in names:
        settings.adapter(name)
    click.echo(f"settings {settings.source}: ok ({len(settings.adapters)} adapters, {len(settings.topics)} topics)")
    store_ok, store_lines = commands.check_store(settings)
    click.echo(f"  store: {'ok' if store_ok else 'FAILED'}")
    for line in store_lines:
        click.echo(f"    {line}")
    failed = not store_ok
    for name, ok, lines in commands.check(settings, list(names) or None):
        click.echo(f"  {name}: {'ok' if ok else 'FAILED'}")
        for line in lines:
            click.echo(f"    {line}")
        failed = failed or not ok
    if settings.webhooks.listen or any(getattr(a, k, None) for a in settings.adapters
                                       for k in ("webhook_secret", "webhook_public_key", "webhook_topic_arns")):
        from receiver.hooks import describe  # Starlette, uvicorn and cryptography only when webhooks are set

        hooks_ok, hook_lines = describe(settings)
        click.echo(f"  webhooks: {'ok' if hooks_ok else 'FAILED'}")
        for line in hook_lines:
            click.echo(f"    {line}")
        failed = failed or not hooks_ok
    if failed:
        sys.exit(EXIT_FAILURE)


@main.command("config")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
@_edge
def config_command(obj: Context, as_json: bool) -> None:
    """Show the settings in force, each with where it came from (secrets as ***)."""
    from .configure import effective_settings
    from .settings import load_with_origins

    obj.settings()  # the same checks, logging and warnings as every command
    settings, load = load_with_origins(obj.config, cli=obj.options())
    entries = effective_settings(settings, load)
    if as_json:
        click.echo(json.dumps({"settings_file": str(settings.source),
                               "settings": [entry.as_dict() for entry in entries]}, indent=2))
        return
    click.echo(f"settings file {settings.source}")
    for entry in entries:
        click.echo(entry.line())


@main.command("init")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("--adapter", "specs", multiple=True, metavar="TYPE[:NAME]",
              help="An adapter to configure (repeatable; default: a csv_folder and a csv_file).")
@click.pass_obj
@_edge
def init_command(obj: Context, file: Path | None, specs: tuple[str, ...]) -> None:
    """Write a commented settings FILE (default: --config, $OPTOUT_SYNC_CONFIG, ./settings.toml) and check it."""
    from .configure import parse_adapter, write_settings_file
    from .settings import config_path, load_settings

    adapters = [parse_adapter(spec) for spec in specs]
    report = write_settings_file(file or config_path(obj.config), adapters)
    click.echo(f"wrote {report.path} with adapters {', '.join(f'{n} ({t})' for t, n in report.adapters)}")
    for secret in report.secret_files:
        click.echo(f"  created {secret} (empty, mode 0600): put the secret in it")
    click.echo(f"checking {report.path}:")
    try:
        settings = load_settings(report.path, cli=obj.options())
    except ConfigError as exc:
        click.echo(f"still missing or invalid: {exc}")
        return
    store_ok, store_lines = commands.check_store(settings)
    click.echo(f"  store: {'ok' if store_ok else 'FAILED'}")
    for name, ok, lines in commands.check(settings):
        click.echo(f"  {name}: {'ok' if ok else 'still missing: ' + '; '.join(lines)}")


@main.command(name="import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--column", metavar="NAME|N", help="The column holding the addresses (name or 1-based number).")
@click.option("--scope", default="*", show_default=True, help="'*' (all email) or a topic key.")
@click.option("--reason", default="imported", show_default=True, type=click.Choice(operator.IMPORT_REASONS))
@click.option("--confirm", type=COUNT, metavar="N", help="Apply, if N is the number of new opt-outs the preview showed.")
@click.option("--legal-basis", type=click.Choice(LEGAL_BASES), help="Stored on every event of the import.")
@click.option("--explanation", help="Free text stored on every event of the import.")
@click.option("--rejected-out", type=click.Path(dir_okay=False, path_type=Path), help="Write every rejected row here.")
@click.option("--json", "as_json", is_flag=True, help="Print the preview (or the result) as JSON, and no progress bar.")
@click.pass_obj
@_edge
def import_command(obj: Context, file: Path, column: str | None, scope: str, reason: str, confirm: int | None,
                   legal_basis: str | None, explanation: str | None, rejected_out: Path | None,
                   as_json: bool) -> None:
    """Import an opt-out list (CSV, TSV or .xlsx): preview first, then --confirm N."""
    settings = obj.settings()
    # The bar is for a person watching: not in a log file or a pipe, and never mixed into JSON.
    bar = None
    if sys.stderr is not None and sys.stderr.isatty() and not as_json:
        from .terminal_progress import ImportBar

        bar = ImportBar(file.name, click.get_text_stream("stderr"))
    with bar or nullcontext():
        source, preview = operator.import_file(
            settings, file, column=column, scope=scope, reason=reason, confirm=confirm, legal_basis=legal_basis,
            explanation=explanation, rejected_out=rejected_out, progress=bar)
    if as_json:
        click.echo(json.dumps(_import_dict(obj, file, source, preview, scope, reason, rejected_out), indent=2))
        return
    click.echo(f"{file.name}: {source.describe()}")
    scope_text = "all email" if scope in ("*", "all") else f"topic {scope}"
    for label, value in (("rows read", preview.rows_read), ("valid unique addresses", preview.unique),
                         ("duplicates", preview.duplicates),
                         (f"already suppressed ({scope_text})", preview.already_suppressed),
                         ("new opt-outs", preview.new), ("rejected rows", preview.rejected_count)):
        click.echo(f"  {label:<36} {value:>10,}")
    for item in preview.rejected_sample:
        click.echo(obj.shown_rejected(f"    {item.where}: {item.reason}", item.value))
    if preview.rejected_count > len(preview.rejected_sample):
        more = preview.rejected_count - len(preview.rejected_sample)
        click.echo(f"    ... and {more:,} more" + ("" if rejected_out else " (all of them with --rejected-out FILE)"))
    if rejected_out:
        click.echo(f"  every rejected row was written to {rejected_out}")
    if preview.applied:
        click.echo(f"Imported {preview.new:,} new opt-outs ({scope_text}, reason {reason}, origin user); "
                   "they reach every sink at its next cycle. No contacts were created anywhere.")
    else:
        click.echo(f"Nothing was changed. To apply, run the same command with --confirm {preview.new}")


def _import_dict(obj: Context, file: Path, source, preview, scope: str, reason: str,
                 rejected_out: Path | None) -> dict:
    """`import --json`: the preview or result as data; rejected values masked unless --show-addresses."""
    rejected = []
    for item in preview.rejected_sample:
        value, message = item.value, item.reason
        if not obj.show_addresses:
            value, message = mask_value(value) if value else value, mask_rejected(message, value)
        rejected.append({"row": getattr(item, "row", None), "value": value, "reason": message})
    return {
        "file": str(file), "read_as": source.describe(), "scope": "*" if scope in ("*", "all") else scope,
        "reason": reason, "rows_read": preview.rows_read, "valid_unique": preview.unique,
        "duplicates": preview.duplicates, "already_suppressed": preview.already_suppressed, "new": preview.new,
        "rejected": preview.rejected_count, "rejected_sample": rejected,
        "rejected_out": str(rejected_out) if rejected_out else None, "applied": preview.applied,
        # The count to confirm with, as the text output asks for it; None once applied.
        "confirm_with": None if preview.applied else preview.new,
    }


@main.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@click.option("--reason", "reasons", multiple=True, type=click.Choice(REASONS), help="Only these reasons (repeatable).")
@click.option("--scope", help="Only this scope ('*' or a topic key).")
@click.option("--source", help="Only opt-outs that came from this adapter (or 'import').")
@click.option("--since", metavar="DATE", help="Only opt-outs that happened on or after this ISO date/date-time.")
@click.option("--until", metavar="DATE", help="Only opt-outs that happened before the end of this ISO date/before this date-time.")
@click.pass_obj
@_edge
def export(obj: Context, output: Path | None, reasons: tuple[str, ...], scope: str | None, source: str | None,
           since: str | None, until: str | None) -> None:
    """Write the suppressions as CSV: email,scope,reason,origin,source,occurred_at,released_at."""
    settings = obj.settings()
    if not settings.store.postgresql:
        require_store(settings.store.path)  # before -o creates its file
    kwargs = dict(reasons=list(reasons), scope=scope, source=source, since=since, until=until)
    if output is None:
        if sys.stdout is None:
            raise InputError("stdout is closed; give -o FILE to export to a file")
        operator.export(settings, sys.stdout, **kwargs)
        return
    with operator.output_file(output, "-o") as handle:
        written = operator.export(settings, handle, **kwargs)
    click.echo(f"wrote {written:,} rows to {output}", err=True)


@main.command()
@click.argument("address")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
@_edge
def history(obj: Context, address: str, as_json: bool) -> None:
    """Every recorded event of ADDRESS, oldest first."""
    normalised, lines = operator.history(obj.settings(), address)
    if as_json:
        click.echo(json.dumps({"address": normalised, "events": [line.data for line in lines]}, indent=2))
        return
    if not lines:
        click.echo(f"{normalised}: no opt-out or event recorded for this address")
        return
    click.echo(f"history of {normalised}:")
    for line in lines:
        click.echo(f"  {line.at}  {line.what}")


@main.command()
@click.option("--since", type=COUNT, default=0, metavar="SEQ", help="Only events after this sequence number.")
@click.option("--follow", is_flag=True, help="Keep waiting for new events until SIGINT/SIGTERM.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, every column.")
@click.pass_obj
@_edge
def events(obj: Context, since: int, follow: bool, as_json: bool) -> None:
    """The event log, oldest first, one event per line; resumable with --since SEQ."""
    import signal

    from . import feed

    settings = obj.settings()
    last = feed.last_seq(settings)  # also: a missing store is one line and exit 2, before any output
    if since > last:
        click.echo(f"note: --since {since} is past the last event ({last}); "
                   + ("waiting for events after it" if follow else "nothing to show"), err=True)
    if sys.stdout is None:
        raise InputError("stdout is closed; events writes to stdout")
    signalled: list[int] = []
    # A signal stops the feed after the chunk being written (a plain flag: safe in a handler), so every
    # line out is a whole event and the last seq printed is where to resume.
    previous = {number: signal.signal(number, lambda number, _frame: signalled.append(number))
                for number in (signal.SIGINT, signal.SIGTERM)}
    render = feed.event_json if as_json else feed.event_line
    out = click.get_text_stream("stdout")
    try:
        for chunk in feed.event_chunks(settings, since, follow=follow,
                                       should_stop=lambda: bool(signalled) or _stdout_closed()):
            out.write("".join(render(event, obj.show_addresses) + "\n" for event in chunk))
            out.flush()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@main.command()
@click.argument("address")
@click.option("--scope", required=True, help="'*' (all email) or the topic key to lift.")
@click.option("--legal-basis", required=True, type=click.Choice(LEGAL_BASES), help="The GDPR basis for mailing again.")
@click.option("--explanation", required=True, help="Why the opt-out is lifted (stored in history).")
@click.option("--propagate", is_flag=True, help="Also remove it from the systems this daemon had applied it to.")
@click.pass_obj
@_edge
def lift(obj: Context, address: str, scope: str, legal_basis: str, explanation: str, propagate: bool) -> None:
    """Lift a user-made opt-out (refused for the recipient's own, bounces and spam complaints)."""
    outcome = operator.lift(obj.settings(), address, scope=scope, legal_basis=legal_basis,
                            explanation=explanation, propagate=propagate)
    click.echo(f"lifted the opt-out of {outcome.address} (scope {outcome.scope}); recorded in its history")
    if outcome.source and outcome.source != "import":
        click.echo(f"  it came from {outcome.source}, which still holds it: lift it there by hand if needed")
    if propagate:
        for name, message in outcome.propagated.items():
            click.echo(f"  {name}: {message}")
        if not outcome.propagated:
            click.echo("  this daemon had not applied it anywhere; nothing to remove")
    elif outcome.applied_at:
        click.echo(f"  still held where this daemon applied it: {', '.join(outcome.applied_at)} "
                   "(run again with --propagate to remove it there)")


@main.command("cleanup")
@click.argument("adapter")
@click.option("--reason", required=True, type=click.Choice(["hard_bounce", "spam_complaint"]),
              help="Which contacts: those that hard-bounced, or those that reported spam.")
@click.option("--since", metavar="DATE", help="Only events on or after this ISO date or date-time.")
@click.option("--until", metavar="DATE", help="Only events before this date-time (a date covers that whole day).")
@click.option("--bounce-category", "categories", multiple=True, metavar="CATEGORY",
              help="Only bounces of this category (repeatable; default: all).")
@click.option("--snapshot", "name", metavar="NAME",
              help="Name for the new snapshot; with --delete, the snapshot to delete (default: the newest).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Where to write the snapshot for review.")
@click.option("--delete", is_flag=True, help="Delete (archive) the contacts of the saved snapshot.")
@click.option("--confirm", type=COUNT, metavar="N", help="With --delete: the snapshot's contact count, typed in.")
@click.pass_obj
@_edge
def cleanup_command(obj: Context, adapter: str, reason: str, since: str | None, until: str | None,
                    categories: tuple[str, ...], name: str | None, csv_path: str | None, delete: bool,
                    confirm: int | None) -> None:
    """Snapshot the contacts of bounced or spam-reporting addresses for review; --delete --confirm N deletes them."""
    from . import cleanup as cleanup_flow

    if not delete:
        if confirm is not None:
            raise InputError("--confirm goes with --delete")
        report = cleanup_flow.build_snapshot(obj.settings(), adapter, reason, since=since, until=until,
                                             categories=list(categories), name=name, csv_path=csv_path)
        click.echo(f"snapshot {report.name}: {report.count} contacts to delete; {report.without_contact} matching "
                   f"addresses have no contact. Review {report.csv_path}")
        click.echo(f"to delete them: optout-sync cleanup {adapter} --reason {reason} --snapshot {report.name} "
                   f"--delete --confirm {report.count}")
        return
    if confirm is None:
        raise InputError("--delete needs --confirm N, the number of contacts in the snapshot")
    if since or until or categories or csv_path:
        raise InputError("--since, --until, --bounce-category and --csv shape a new snapshot; --delete uses a saved one")
    report = cleanup_flow.delete_snapshot(obj.settings(), adapter, confirm=confirm, reason=reason, name=name)
    click.echo(f"snapshot {report.name}: deleted {report.deleted} contacts, {report.failed} failed"
               f"{f', {report.done_before} deleted earlier' if report.done_before else ''}; "
               "their suppressions stay")
    if report.failed:
        click.echo("run the same command again to retry; see optout-sync history ADDRESS for each outcome",
                   err=True)
        sys.exit(EXIT_FAILURE)


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@click.pass_obj
@_edge
def backup(obj: Context, file: Path, force: bool) -> None:
    """Copy the store to FILE (mode 0600), consistently, also while the daemon runs."""
    from .backup import backup as backup_store

    report = backup_store(obj.settings(), file, force=force)
    facts = report.facts
    click.echo(f"backed up the store {report.store} to {report.path}: {facts.suppressions:,} suppressions, "
               f"{facts.events:,} events, store id {facts.store_id}; integrity ok, mode 0600")


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.pass_obj
@_edge
def restore(obj: Context, file: Path) -> None:
    """Replace the store with the backup FILE (refused while a daemon holds the store)."""
    from .backup import restore as restore_store

    report = restore_store(obj.settings(), file)
    facts = report.facts
    click.echo(f"restored the store {report.store} from {report.source}: {facts.suppressions:,} suppressions, "
               f"{facts.events:,} events, store id {facts.store_id}")
    if report.kept_previous:
        click.echo(f"  the replaced store was kept as {report.kept_previous}; delete it when it is no longer needed")


@main.group("store")
def store_group() -> None:
    """Move the store between SQLite and PostgreSQL."""


@store_group.command("copy")
@click.option("--to", "to", metavar="URL|FILE", help="The destination: a postgresql:// URL or a new SQLite file.")
@click.option("--to-file", type=click.Path(path_type=Path), metavar="FILE",
              help="A secret file holding the destination URL (keeps a password off the command line).")
@click.option("--from", "from_", metavar="URL|FILE", help="The source (default: the configured store).")
@click.option("--from-file", type=click.Path(path_type=Path), metavar="FILE",
              help="A secret file holding the source URL.")
@click.pass_obj
@_edge
def store_copy_command(obj: Context, to: str | None, to_file: Path | None, from_: str | None,
                       from_file: Path | None) -> None:
    """Copy the store to PostgreSQL or back to SQLite; refused while a daemon holds it; verified."""
    from .store_copy import copy_store, read_url_file

    if (to is None) == (to_file is None):
        raise InputError("give the destination with --to URL|FILE or --to-file FILE (one of them)")
    if from_ is not None and from_file is not None:
        raise InputError("give the source with --from or --from-file, not both")
    destination = to if to is not None else read_url_file(to_file, "--to-file")
    if from_file is not None:
        source = read_url_file(from_file, "--from-file")
    elif from_ is not None:
        source = from_
    else:
        store = obj.settings().store  # the configured store, whichever backend
        if store.postgresql:
            source = store.url_text()
        else:
            source = store.path
            require_store(source)
    report = copy_store(source, destination)
    click.echo(f"copied the store {report.source} to {report.destination} (schema version {report.schema_version}):")
    for table, facts in report.tables.items():
        click.echo(f"  {table:<20} {facts.rows:>12,} rows")
    click.echo(f"  event log sha256 {report.events_sha256}")
    click.echo("verified: every table's row count and checksum are equal on both sides")


if __name__ == "__main__":
    main()
