"""Where the assistant keeps the user's data (conversations), per platform conventions.

macOS: ~/Library/Application Support/gptoss-metal; Linux and others: $XDG_DATA_HOME/gptoss-metal
(default ~/.local/share/gptoss-metal); Windows: %LOCALAPPDATA%\\gptoss-metal. GPTOSS_DATA_DIR
overrides all of them (tests and portable installs use it), and so does `--data-dir`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping, Optional

APP_NAME = "gptoss-metal"
ENV_VAR = "GPTOSS_DATA_DIR"


def user_data_dir(env: Optional[Mapping[str, str]] = None, platform: Optional[str] = None,
                  home: Optional[Path] = None) -> Path:
    """The folder for this user's data (not created here). Arguments exist for tests."""
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    home = Path.home() if home is None else home
    if env.get(ENV_VAR):
        return Path(env[ENV_VAR]).expanduser()
    if platform == "darwin":
        return home / "Library" / "Application Support" / APP_NAME
    if platform.startswith("win"):
        return Path(env.get("LOCALAPPDATA") or home / "AppData" / "Local") / APP_NAME
    xdg = env.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".local" / "share"  # XDG: relative is invalid
    return base / APP_NAME
