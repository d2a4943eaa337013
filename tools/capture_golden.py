"""Record real kernel replies for the unit tests' golden files.

Run inside a kernel with device-mapper, as root; it prints one JSON object:
the raw reply buffers (base64) of DM_LIST_DEVICES, DM_TABLE_STATUS (table and
status), DM_TABLE_DEPS and DM_LIST_VERSIONS, beside what was created, known
independently of the parsers (names, uuids, tables, device numbers from stat):

    python3 tools/vm.py -- .venv/bin/python tools/capture_golden.py \\
        > tests/unit/golden/replies.json
"""

from __future__ import annotations

import base64
import json
import os
import sys

from dmioctl import DeviceMapper, Target
from dmioctl.ioctl import Reply, issue
from dmioctl.nodes import node_path
from dmioctl.uapi.dm import DMCommand, DMFlag

DEVICES = {
    "golden-a": ("uuid-golden-a", [Target(0, 2048, "zero"), Target(2048, 8, "error")]),
    "golden-bb": ("", [Target(0, 16, "zero")]),
}


def encoded(reply: Reply) -> dict[str, object]:
    return {
        "target_count": reply.target_count,
        "data_start": reply.data_start,
        "flags": int(reply.flags),
        "buffer": base64.b64encode(bytes(reply.buffer[: reply.data_size])).decode(),
    }


def main() -> int:
    with DeviceMapper() as dm:
        for name, (uuid, targets) in DEVICES.items():
            dm.create(name, uuid=uuid)
            dm.load_table(name, targets)
            dm.resume(name)
        upper = "golden-upper"
        lower = os.stat(node_path("golden-a")).st_rdev
        dm.create(upper)
        dm.load_table(upper, [Target(0, 8, "linear", f"{os.major(lower)}:{os.minor(lower)} 0")])
        dm.resume(upper)
        try:
            fd = dm.fd
            record = {
                "devices": {
                    name: {
                        "uuid": uuid,
                        "table": [[t.start, t.length, t.target_type, t.params] for t in targets],
                        "dev": [os.major(st.st_rdev), os.minor(st.st_rdev)],
                    }
                    for name, (uuid, targets) in DEVICES.items()
                    for st in [os.stat(node_path(name))]
                },
                "deps_of_upper": [os.major(lower), os.minor(lower)],
                "list_devices": encoded(
                    issue(fd, DMCommand.DM_LIST_DEVICES_CMD, flags=DMFlag.DM_UUID_FLAG)
                ),
                "table_a": encoded(
                    issue(
                        fd,
                        DMCommand.DM_TABLE_STATUS_CMD,
                        name="golden-a",
                        flags=DMFlag.DM_STATUS_TABLE_FLAG,
                    )
                ),
                "status_a": encoded(issue(fd, DMCommand.DM_TABLE_STATUS_CMD, name="golden-a")),
                "deps_upper": encoded(issue(fd, DMCommand.DM_TABLE_DEPS_CMD, name=upper)),
                "list_versions": encoded(issue(fd, DMCommand.DM_LIST_VERSIONS_CMD)),
            }
        finally:
            dm.remove(upper)
            for name in DEVICES:
                dm.remove(name)
    json.dump(record, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
