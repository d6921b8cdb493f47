"""`python -m mobile_client`: the interactive app (desktop window, or the Android entry point)."""

from __future__ import annotations

import logging
from pathlib import Path

from mobile_client.applog import after_kivy_import, configure_logging

__all__ = ["configure_logging", "main"]


def main(server: str = "http://127.0.0.1:8000", data: Path | None = None, replay_data: str | None = None,
         bank_key: str | None = None) -> int:
    from mobile_client.platform_info import is_android

    configure_logging()
    from mobile_client.api import server_url

    try:  # an address nothing can be sent to: said now, not "could not reach your bank" at each request
        server = server_url(server)
    except ValueError as exc:
        logging.getLogger("mobile_client").error("%s", exc)
        return 1
    if not is_android():
        from mobile_client.headless import window_size
        from mobile_client.ui.theme import WINDOW_SIZE

        window_size(*WINDOW_SIZE)
        data = data or Path.home() / ".cadence-app"
    else:  # pragma: no cover - Android only
        from android.storage import app_storage_path  # type: ignore[import-not-found]

        data = Path(app_storage_path()) / "cadence"
    from mobile_client.profile import ProfileUnreadable
    from mobile_client.secrets_store import KeystoreUnavailable
    from mobile_client.services import DeviceKeyUnreadable, build_services
    from mobile_client.ui.app import CadenceApp

    after_kivy_import()  # importing Kivy set the root logger to NOTSET: the app logs INFO and up

    try:
        services = build_services(data, server, bank_api_key=bank_key)
    except KeystoreUnavailable as exc:  # refusing beats reading wrapped keys as plain ones: say why, once
        logging.getLogger("mobile_client").error("%s. Restart the phone; if it persists, reinstall the app "
                                                 "and set it up again (the server keeps nothing to restore)", exc)
        return 1
    except DeviceKeyUnreadable as exc:  # never a new identity behind the person's back: say what to do
        logging.getLogger("mobile_client").error(
            "%s. Restore that file from a backup if you have one; otherwise move the folder %s aside (or "
            "reinstall the app) and start the app again to set it up anew (this phone then gets a new key)",
            exc, data)
        return 1
    except ProfileUnreadable as exc:  # maybe a good file: never a new identity because of a read error
        logging.getLogger("mobile_client").error(
            "%s. Nothing was changed. Check that the app can read its folder %s (permissions, free storage) "
            "and start the app again", exc, data)
        return 1
    CadenceApp(services, data_dir_for_replay=replay_data).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
