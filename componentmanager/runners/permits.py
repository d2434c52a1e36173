"""Which external programs an agent runs: a pure decision.

An agent runs a ``command:`` node only when its executable matches one of the agent's
``--allow-commands`` globs, and an ``image:`` node only when the image matches one of
its ``--allow-images`` globs (``*`` for any). None are allowed by default, as Nomad ships
its raw-exec driver disabled: whoever can write the ``flowctl_config`` bucket could
otherwise run anything on every host. NATS permissions on that bucket are the boundary;
these flags are the agent's own line. In-process components always run; inline Python
``code:`` needs ``--allow-inline-code``.
"""

from __future__ import annotations

import fnmatch
import os
import shutil

from flowstore.models import ComponentConfig


def refusal(cfg: ComponentConfig, allow_commands: tuple[str, ...],
            allow_images: tuple[str, ...]) -> str | None:
    """Why this agent must not run ``cfg``'s program or container, or None."""
    ext = cfg.external
    if cfg.kind == "container" and ext is not None and ext.image:
        if any(fnmatch.fnmatchcase(ext.image, p) for p in allow_images):
            return None
        return (f"this agent does not run the image {ext.image!r}: start it with "
                f"--allow-images '{ext.image}' (a glob; '*' allows any)")
    if cfg.kind == "process" and ext is not None and ext.program:
        command = ext.program
        names = {command, os.path.basename(command)}
        resolved = shutil.which(command)
        if resolved:
            names |= {resolved, os.path.realpath(resolved)}
        if any(fnmatch.fnmatchcase(n, p) for n in names for p in allow_commands):
            return None
        return (f"this agent does not run the program {command!r}: start it with "
                f"--allow-commands '{os.path.basename(command)}' (a glob on the executable; "
                "'*' allows any)")
    return None
