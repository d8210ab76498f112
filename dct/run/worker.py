"""The worker side of a deployment: find this repository's code before Prefect loads a flow from it.

Prefect resolves the pull step ``set_working_directory: "{{ $DCT_CODE_DIR }}"`` on the worker when a run
starts; with ``DCT_CODE_DIR`` unset that is ``""``, the run stays in the worker's temporary directory and
crashes with a bare ``FileNotFoundError`` for ``flows/dct_flow.py``. :func:`check_code_directory` is the
next pull step (``deployments/prefect.yaml``): it defaults sensibly or says what to set.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

ENTRYPOINT = Path("flows") / "dct_flow.py"


def _checkout_of_this_package() -> Path | None:
    """The repository that this ``dct`` was imported from, if it is a checkout (editable install)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / ENTRYPOINT).is_file() else None


def check_code_directory() -> dict[str, str]:
    """Pull step: make the working directory the repository that holds the flows (docs/deployments.md).

    Already there (``DCT_CODE_DIR`` set right): nothing changes. ``DCT_CODE_DIR`` unset and this ``dct`` imported
    from a checkout: that checkout (a warning says so). Otherwise a clear error instead of Prefect's bare one.

    Returns:
        ``{"directory": <the working directory>}`` (Prefect's pull-step output convention).

    Raises:
        ValueError: the flows are not in the working directory; the message names ``DCT_CODE_DIR`` and what
            to set it to.
    """
    cwd = Path.cwd()
    if (cwd / ENTRYPOINT).is_file():
        return {"directory": str(cwd)}
    value = os.environ.get("DCT_CODE_DIR")
    checkout = _checkout_of_this_package()
    if not value and checkout is not None:
        logger.warning("DCT_CODE_DIR is not set on this worker; using the checkout dct runs from: %s", checkout)
        os.chdir(checkout)
        return {"directory": str(checkout)}
    where = f"{value!r} has no {ENTRYPOINT}" if value else "is not set on this worker"
    hint = f" (this worker's dct is imported from {str(Path(__file__).resolve().parents[2])!r})"
    raise ValueError(
        f"DCT_CODE_DIR {where}: set DCT_CODE_DIR in the worker's environment to the directory of the dct "
        f"repository on this machine, the one that contains {ENTRYPOINT} (the image's WORKDIR, e.g. "
        f"DCT_CODE_DIR=/opt/dct), then restart the worker; see docs/deployments.md{hint if checkout is None else ''}"
    )
