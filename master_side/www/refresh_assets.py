"""Refresh the web terminal's prebuilt static files from the npm registry (run by hand; never at install time).

    python3 -m master_side.www.refresh_assets

Pinned: the package versions, their tarball URLs (as `npm view <pkg>@<version> dist.tarball` gives them) and
the sha256 of each tarball. A tarball whose checksum differs is refused and nothing is written. The licence of
each package is copied beside its files. To move to a new version: change the pin, run `npm view` for the URL,
fetch it once, check it, and record its sha256 here.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
import urllib.request
from dataclasses import dataclass


@dataclass(frozen=True)
class Asset:
    package: str
    version: str
    url: str
    sha256: str
    files: dict[str, str]  # path inside the tarball -> name in static/

    @property
    def licence(self) -> str:
        return f"LICENSE.{self.package.split('/')[-1]}"


ASSETS = (
    Asset("@xterm/xterm", "6.0.0", "https://registry.npmjs.org/@xterm/xterm/-/xterm-6.0.0.tgz",
          "908e66e04af6c8dc6b00dd3b54de088e2e81e5ed866284fd6c2fb3c2d1c7a3f6",
          {"package/lib/xterm.js": "xterm.js", "package/css/xterm.css": "xterm.css"}),
    Asset("@xterm/addon-fit", "0.11.0", "https://registry.npmjs.org/@xterm/addon-fit/-/addon-fit-0.11.0.tgz",
          "26003b4517a132b64e4ff228fd88a5fda3fff5e606c76093f6dcff772e9ecec0",
          {"package/lib/addon-fit.js": "addon-fit.js"}),
    Asset("asciinema-player", "3.17.0", "https://registry.npmjs.org/asciinema-player/-/asciinema-player-3.17.0.tgz",
          "d03ef67fc2f32a7aa5177c0b64650c7c8fd234ef2d3e4b34886632bb3dd58c5c",
          {"package/dist/bundle/asciinema-player.min.js": "asciinema-player.min.js",
           "package/dist/bundle/asciinema-player.css": "asciinema-player.css"}),
)

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


def fetch(asset: Asset) -> dict[str, bytes]:
    """The files of `asset` (static name -> content), its licence included. Raises ValueError on a checksum
    mismatch or a missing file."""
    with urllib.request.urlopen(asset.url, timeout=60) as response:
        data = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != asset.sha256:
        raise ValueError(f"{asset.package}@{asset.version}: sha256 {digest}, expected {asset.sha256}")
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for inner, name in {**asset.files, "package/LICENSE": asset.licence}.items():
            member = tar.extractfile(inner)
            if member is None:
                raise ValueError(f"{asset.package}@{asset.version}: no {inner} in the tarball")
            out[name] = member.read()
    return out


def main() -> int:
    files: dict[str, bytes] = {}
    for asset in ASSETS:
        try:
            files.update(fetch(asset))
        except (OSError, ValueError) as e:
            print(f"refresh_assets: {e}", file=sys.stderr)
            return 1
    for name, content in files.items():
        with open(os.path.join(STATIC, name), "wb") as f:
            f.write(content)
        print(f"static/{name}: {len(content)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
