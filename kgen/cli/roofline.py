"""`kgen roofline`: the device's measured ceilings (kgen/roofline.py), cached per device identity."""
from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("roofline", help="measure (or show the cached) copy bandwidth and peak "
                              "matrix throughput of a device")
    p.add_argument("--device", type=int, help="device index (see `kgen devices`; default: KGEN_DEVICE, "
                   "else discrete > integrated > CPU)")
    p.add_argument("--refresh", action="store_true", help="measure again even when a record is cached")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    p.set_defaults(func=cmd_roofline)


def cmd_roofline(args) -> int:
    from ..timing import roofline
    from ..runtime import open_device
    device = open_device(args.device)
    progress = None if args.json else (lambda message: print(f"  measured {message}", file=sys.stderr))
    record = roofline.ceilings(device, refresh=args.refresh, progress=progress)
    if args.json:
        print(json.dumps(record.to_dict(), indent=2, sort_keys=True))
        return 0
    print(f"{record.device_name} (device key {record.device_key}, measured {record.measured_at})")
    print(f"  {'copy':<12} {record.copy_gbps:10.1f} GB/s (bytes read + written)")
    for key in roofline.MATRIX_KEYS:
        if key in record.matrix_tflops:
            print(f"  {key:<12} {record.matrix_tflops[key]:10.3f} TFLOPS")
    for key, reason in roofline.unavailable(device.caps).items():
        print(f"  {key:<12} {'-':>10}        ({reason})")
    print(f"  cache: {roofline.cache_path(record.device_key)}")
    return 0
