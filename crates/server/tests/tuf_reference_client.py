"""A reference TUF client (python-tuf's ngclient) run against a Patchbay server.

usage: tuf_reference_client.py BASE_URL CLIENT_DIR ROOT_JSON TARGET...

Bootstraps from ROOT_JSON (the embedded trust anchor; the metadata it trusted on earlier
runs stays in CLIENT_DIR, as a real client keeps it), refreshes, downloads each TARGET and prints one JSON
object: the trusted versions and, per target, its sha256 and (for JSON targets) its content.
Any refusal is an exception: the exit code is non-zero and the traceback says why.
"""

import hashlib
import json
import os
import sys

from tuf.ngclient import Updater


def main() -> None:
    base, client_dir, root_json, *targets = sys.argv[1:]
    metadata_dir = os.path.join(client_dir, "metadata")
    download_dir = os.path.join(client_dir, "downloads")
    os.makedirs(metadata_dir, exist_ok=True)
    os.makedirs(download_dir, exist_ok=True)
    with open(root_json, "rb") as f:
        embedded_root = f.read()
    # The embedded root is the trust anchor; newer roots the client verified earlier are
    # kept in metadata_dir and used from there.
    updater = Updater(
        metadata_dir=metadata_dir,
        metadata_base_url=f"{base}/tuf/metadata/",
        target_dir=download_dir,
        target_base_url=f"{base}/tuf/targets/",
        bootstrap=embedded_root,
    )
    updater.refresh()
    trusted = updater._trusted_set  # versions only, for the report
    out = {
        "root": trusted.root.version,
        "timestamp": trusted.timestamp.version,
        "snapshot": trusted.snapshot.version,
        "targets": trusted.targets.version,
        "files": {},
    }
    for name in targets:
        info = updater.get_targetinfo(name)
        if info is None:
            raise SystemExit(f"target {name} is not in the signed targets")
        path = updater.download_target(info, os.path.join(download_dir, name.replace("/", "_")))
        with open(path, "rb") as f:
            data = f.read()
        entry = {"sha256": hashlib.sha256(data).hexdigest(), "length": len(data)}
        if name.endswith(".json"):
            entry["json"] = json.loads(data)
        out["files"][name] = entry
    print(json.dumps(out))


if __name__ == "__main__":
    main()
