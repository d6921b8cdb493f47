"""`cadence app`: run the mobile app on the desktop, or render its screens headless."""

from __future__ import annotations

import sys

import typer

app = typer.Typer()


@app.command("app")
def run_app(
    screenshots_opt: str | None = typer.Option(None, "--screenshots", help="Headless tour: save one PNG per screen here and exit."),
    server: str | None = typer.Option(None, "--server", help="Server URL (default: http://127.0.0.1:8000; the tour uses a scripted demo bank)."),
    data_opt: str | None = typer.Option(None, "--app-data", help="App data folder (default: ~/.cadence-app; the --screenshots tour: a temp folder it removes)."),
    data_dir_opt: str | None = typer.Option(None, "--data-dir", envvar="CADENCE_DATA_DIR", help="Datasets folder: the desktop walk replays a real BB-MAS recording."),
    bank_key: str | None = typer.Option(None, "--bank-key", help="Bank API key for device registration and step-up (demo builds only)."),
) -> None:
    """Run the Cadence companion app (Kivy), or with --screenshots a headless tour of every screen."""
    from cadence.commands.paths import ensure_writable_dir, folder_option, path_option

    screenshots = path_option(screenshots_opt, "--screenshots")  # '' would mean the current folder
    # a folder that is not there: refused as every other command does, not a synthetic walk after a warning
    data_dir = folder_option(data_dir_opt, "--data-dir")
    data = path_option(data_opt, "--app-data")
    if data is not None:  # a file or an unwritable folder: named now, not a traceback from the app
        ensure_writable_dir(data, "--app-data")
    if server is not None:  # an address nothing can be sent to: named now, not "could not reach your bank" later
        from mobile_client.api import server_url

        try:
            server = server_url(server)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--server") from exc
    from mobile_client import tour

    if screenshots is not None:
        ensure_writable_dir(screenshots, "--screenshots")
        argv = ["--screenshots", str(screenshots), "--report", str(screenshots / "tour.json")]
        if server:
            argv += ["--server", server]
        if data_dir:
            argv += ["--replay-data", str(data_dir)]
        if bank_key:
            argv += ["--bank-key", bank_key]
        if data is not None:  # kept afterwards; without it the tour uses a temp folder it removes
            argv += ["--app-data", str(data)]
        try:
            rc = tour.main(argv)
        except RuntimeError as exc:  # the tour stops on the first screen that failed: one line, not a traceback
            from cadence.commands.errors import error_line

            if server and "could not reach" in str(exc).lower():
                error_line(f"could not reach the server at {server}")
            else:
                error_line(exc)
            raise typer.Exit(1) from None
        if rc == 0:
            pngs = sorted(screenshots.glob("*.png"))
            typer.echo(f"{len(pngs)} screenshots in {screenshots}: " + ", ".join(p.stem for p in pngs))
        raise typer.Exit(rc)
    from mobile_client.__main__ import main

    sys.exit(main(server=server or "http://127.0.0.1:8000", data=data, replay_data=str(data_dir) if data_dir else None,
                  bank_key=bank_key))
