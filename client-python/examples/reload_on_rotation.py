"""Keeps a service's configuration in step with its secrets.

What each event means for a running service:

- SNAPSHOT: the current values, first at start-up and again after a
  reconnect if they changed while the agent was away: load them;
- CONTENT_CHANGED: new values (an edit, or the secret came back): reload;
- RECRYPTED: the Transit key was rotated; the values are the same, so there is
  nothing to do but note it;
- DELETED: the secret is gone: keep running on the configuration we have;
- ERROR: the newest version cannot be decrypted or parsed: keep the old
  configuration (the event still carries the last good values) and log why.

The watch reconnects by itself when the agent restarts; it only raises when the
agent refuses the request (a bad reference, a refused token).

Usage: python reload_on_rotation.py [REF]   (default: app); stop with Ctrl-C.
"""

from __future__ import annotations

import logging
import sys
from typing import Dict, List, Mapping

from vaultlet import Client, Event, VaultletError

log = logging.getLogger("reload_on_rotation")


class Service:
    """Stands for the application: it rebuilds its configuration from secrets."""

    def __init__(self) -> None:
        self.config: Dict[str, str] = {}

    def reload(self, values: Mapping[str, str]) -> None:
        # A real service would reconnect its database pool, re-sign its
        # clients, ... with the new values here.
        self.config = dict(values)


def handle(service: Service, event: Event) -> None:
    s = event.secret
    if event.kind in ("SNAPSHOT", "CONTENT_CHANGED"):
        service.reload(s)
        log.info("%s %s: configuration reloaded (revision %s, fields %s)", event.ref, event.kind, s.revision, sorted(s))
    elif event.kind == "RECRYPTED":
        log.info("%s RECRYPTED: key version %d, same values, nothing to reload", event.ref, s.key_version)
    elif event.kind == "DELETED":
        log.warning("%s DELETED: keeping the current configuration", event.ref)
    elif event.kind == "ERROR" and event.error is not None:
        log.error(
            "%s ERROR: revision %s cannot be used (%s: %s); keeping the configuration of revision %s",
            event.ref,
            event.error.revision,
            event.error.code,
            event.error.message,
            s.revision or "(none)",
        )
    else:
        log.warning("%s: event kind %s is newer than this service; ignored", event.ref, event.kind)


def main(argv: List[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stdout)
    ref = argv[1] if len(argv) > 1 else "app"
    service = Service()
    try:
        with Client() as vaultlet:
            for event in vaultlet.watch(ref):
                handle(service, event)
    except VaultletError as e:
        log.error("watch of %s ended: %s", ref, e)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
