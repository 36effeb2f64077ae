#!/usr/bin/env python
"""Regenerate ``caffe_compat/_schema_desc.bin`` from ``proto/*.proto``.

``caffe_compat.schema`` builds its message classes at runtime from a serialized
``google.protobuf.FileDescriptorSet`` that ships with the package, so neither
``protoc`` nor generated ``*_pb2.py`` modules are needed when installing or using
the package. This development-time script produces that file with the ``protoc``
bundled in ``grpcio-tools`` (a dev-only dependency)::

    python tools/build_schema.py            # rewrite the .bin
    python tools/build_schema.py --check    # exit 1 if the shipped .bin is stale

``--check`` compiles the .proto files again and compares the result with the
shipped file *as descriptors* (after normalising fields that only depend on the
protoc version, such as ``json_name``), so a different grpcio-tools release does
not by itself make the file stale.

Exit status: 0 = written / up to date, 1 = stale (``--check``), 2 = error
(grpcio-tools missing, protoc failure).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

LOG = logging.getLogger("build_schema")

REPO = Path(__file__).resolve().parents[1]
PROTO_DIR = REPO / "proto"
PROTO_FILES = ("caffe.proto", "caffe_weights.proto")
OUTPUT = REPO / "caffe_compat" / "_schema_desc.bin"


class BuildError(RuntimeError):
    """protoc is unavailable or failed."""


def compile_descriptor_set(proto_dir: Path = PROTO_DIR, files=PROTO_FILES) -> bytes:
    """Run grpc_tools.protoc and return the serialized FileDescriptorSet."""
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BuildError(
            "grpc_tools is not installed; install the dev dependency "
            "`pip install grpcio-tools` to (re)build the schema"
        ) from exc

    include_dirs = [str(proto_dir)]
    try:  # well-known types (google/protobuf/*.proto); not imported today, harmless
        import importlib.resources as ir

        wkt = ir.files("grpc_tools") / "_proto"
        if wkt.is_dir():
            include_dirs.append(str(wkt))
    except Exception:  # pragma: no cover
        pass

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "schema_desc.bin"
        args = ["grpc_tools.protoc"]
        args += [f"-I{d}" for d in include_dirs]
        args += [f"--descriptor_set_out={out}", "--include_imports"]
        args += [str(f) for f in files]
        LOG.debug("running %s", " ".join(args))
        rc = protoc.main(args)
        if rc != 0 or not out.exists():
            raise BuildError(f"protoc failed with status {rc} (see messages above)")
        return out.read_bytes()


def _normalised(data: bytes):
    """Parse a FileDescriptorSet and drop protoc-version-dependent details."""
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(data)

    def clean_message(msg):
        for field in list(msg.field) + list(msg.extension):
            field.ClearField("json_name")
        for nested in msg.nested_type:
            clean_message(nested)

    for f in fds.file:
        if f.syntax == "proto2":
            f.ClearField("syntax")
        if "edition" in f.DESCRIPTOR.fields_by_name and f.HasField("edition"):
            f.ClearField("edition")
        f.ClearField("source_code_info")
        for msg in f.message_type:
            clean_message(msg)
        for ext in f.extension:
            ext.ClearField("json_name")
    return fds


def is_up_to_date(shipped: bytes, fresh: bytes) -> bool:
    if shipped == fresh:
        return True
    try:
        return _normalised(shipped) == _normalised(fresh)
    except Exception:  # unparsable shipped file => stale
        return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the shipped descriptor set is stale or missing",
    )
    parser.add_argument(
        "--output", type=Path, default=OUTPUT, help=f"descriptor set path (default: {OUTPUT})"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(name)s: %(levelname)s: %(message)s",
    )

    try:
        fresh = compile_descriptor_set()
    except BuildError as exc:
        LOG.error("%s", exc)
        return 2

    output: Path = args.output
    if args.check:
        if not output.exists():
            LOG.error("%s is missing; run `python tools/build_schema.py`", output)
            return 1
        if not is_up_to_date(output.read_bytes(), fresh):
            LOG.error(
                "%s is stale with respect to %s; run `python tools/build_schema.py`",
                output,
                ", ".join(f"proto/{f}" for f in PROTO_FILES),
            )
            return 1
        LOG.info("%s is up to date (%d bytes)", output, output.stat().st_size)
        return 0

    output.parent.mkdir(parents=True, exist_ok=True)
    if output.exists() and output.read_bytes() == fresh:
        LOG.info("%s unchanged (%d bytes)", output, len(fresh))
        return 0
    output.write_bytes(fresh)
    LOG.info("wrote %s (%d bytes) from %s", output, len(fresh), ", ".join(PROTO_FILES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
