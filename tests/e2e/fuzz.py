"""Random protobuf for fuzz tests: well-formed wire format with random
fields, messages of a given type with fields set at and past their limits,
and bytes mutated (flipped, cut, appended to, inserted into).

Every function takes the caller's random.Random, so that a seed replays a
run."""
import argparse
import os
import struct
import sys
import time

from google.protobuf import descriptor


def arguments(seconds, seconds_help):
    """The fuzz tests' command line: BIN_DIR [PYTHON_DIR] [--seconds=S]
    [--seed=N]. Leaves the rest in sys.argv for unittest, and puts
    PYTHON_DIR (the generated reflection client, BIN_DIR/../python by
    default) on the path."""
    parser = argparse.ArgumentParser()
    parser.add_argument("bin")
    parser.add_argument("python_dir", nargs="?", default=None,
                        help="where grpc_reflection_client was generated (build/python)")
    parser.add_argument("--seconds", type=float, default=seconds, help=seconds_help)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args, rest = parser.parse_known_args()
    sys.argv[1:] = rest
    sys.path.insert(0, args.python_dir or os.path.join(os.path.dirname(os.path.abspath(args.bin)),
                                                      "python"))
    return args


def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def random_float(rng):
    return rng.choice([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e38, -1e38,
                       1e-45, rng.uniform(-2, 2), rng.uniform(-1e6, 1e6)])


def random_message(rng, depth=0):
    """Well-formed protobuf wire format with random fields."""
    out = bytearray()
    for _ in range(rng.choice([0, 1, 2, 3, 5, 8])):
        field = rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 15, 16, 20, 100])
        wire = rng.choice([0, 0, 1, 2, 2, 2, 5, 5])
        out += varint(field << 3 | wire)
        if wire == 0:
            out += varint(rng.choice([0, 1, 2, 3, 7, 255, 1 << 31, (1 << 32) - 1, 1 << 32,
                                      (1 << 63) - 1, (1 << 64) - 1, rng.getrandbits(64),
                                      rng.randrange(100000)]))
        elif wire == 1:
            out += struct.pack("<d", random_float(rng))
        elif wire == 5:
            out += struct.pack("<f", random_float(rng))
        else:
            kind = rng.randrange(5)
            if kind == 0 and depth < 3:
                body = random_message(rng, depth + 1)
            elif kind == 1:  # packed floats
                body = b"".join(struct.pack("<f", random_float(rng))
                                for _ in range(rng.choice([0, 1, 3, 16, 784, 1000])))
            elif kind == 2:  # packed varints
                body = b"".join(varint(rng.getrandbits(rng.choice([3, 32, 64])))
                                for _ in range(rng.choice([1, 4, 50])))
            elif kind == 3:
                body = rng.choice([b"fuzz", b"", b"keep\x00", "\u00e9t\u00e9".encode(),
                                   b"\xff\xfe", b"a" * 300, b"../fuzz"])
            else:
                body = rng.randbytes(rng.choice([0, 1, 8, 100]))
            out += varint(len(body)) + body
    return bytes(out)


INT_EDGES = {
    descriptor.FieldDescriptor.TYPE_UINT32: [0, 1, 2, 3, 8, 100, 1000, (1 << 32) - 1],
    descriptor.FieldDescriptor.TYPE_FIXED32: [0, 1, 8, (1 << 32) - 1],
    descriptor.FieldDescriptor.TYPE_INT32: [0, 1, -1, 8, (1 << 31) - 1, -(1 << 31)],
    descriptor.FieldDescriptor.TYPE_SINT32: [0, 1, -1, (1 << 31) - 1, -(1 << 31)],
    descriptor.FieldDescriptor.TYPE_SFIXED32: [0, -1, (1 << 31) - 1],
    descriptor.FieldDescriptor.TYPE_UINT64: [0, 1, 2, 8, 1000, 1 << 32, (1 << 63), (1 << 64) - 1],
    descriptor.FieldDescriptor.TYPE_FIXED64: [0, 1, (1 << 64) - 1],
    descriptor.FieldDescriptor.TYPE_INT64: [0, 1, -1, (1 << 63) - 1, -(1 << 63)],
    descriptor.FieldDescriptor.TYPE_SINT64: [0, -1, (1 << 63) - 1, -(1 << 63)],
    descriptor.FieldDescriptor.TYPE_SFIXED64: [0, -1, (1 << 63) - 1],
}
STRINGS = ["fuzz", "fuzz", "", "x" * 300, "\u00e9t\u00e9", "a\x00b", "../fuzz", "fuzz2",
           "label", "k", "=", "24h", "-1s", "9999999999h"]


def random_scalar(rng, field):
    t = field.type
    fd = descriptor.FieldDescriptor
    if t in INT_EDGES:
        return rng.choice(INT_EDGES[t] + [rng.randrange(0, 20)])
    if t in (fd.TYPE_FLOAT, fd.TYPE_DOUBLE):
        return rng.choice([0.5, 1.0, 0.001, 4.0, random_float(rng)])
    if t == fd.TYPE_BOOL:
        return rng.random() < 0.5
    if t == fd.TYPE_STRING:
        return rng.choice(STRINGS)
    if t == fd.TYPE_BYTES:
        return rng.randbytes(rng.choice([0, 1, 16, 500]))
    if t == fd.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        return rng.choice(numbers + [max(numbers) + 1, 1000])
    raise AssertionError(field.full_name)


def fill(rng, message, depth=0, store="fuzz"):
    """Sets random fields of `message` with values at and past its limits;
    a field named store or name mostly to `store`."""
    for field in message.DESCRIPTOR.fields:
        if field.name in ("store", "name") and field.type == field.TYPE_STRING:
            # Mostly the store there is, so that calls get past the lookup.
            setattr(message, field.name, store if rng.random() < 0.9 else rng.choice(STRINGS))
            continue
        if rng.random() < 0.4:
            continue
        is_message = field.type == descriptor.FieldDescriptor.TYPE_MESSAGE
        if field.label == descriptor.FieldDescriptor.LABEL_REPEATED:
            if is_message:
                if depth >= 3:
                    continue
                target = getattr(message, field.name)
                if field.message_type.GetOptions().map_entry:
                    for _ in range(rng.choice([0, 1, 3])):
                        entry = field.message_type.fields_by_name
                        key = random_scalar(rng, entry["key"])
                        if entry["value"].type == descriptor.FieldDescriptor.TYPE_MESSAGE:
                            fill(rng, target[key], depth + 1, store)
                        else:
                            target[key] = random_scalar(rng, entry["value"])
                    continue
                for _ in range(rng.choice([0, 1, 2, 3, 20])):
                    fill(rng, target.add(), depth + 1, store)
            else:
                n = rng.choice([0, 1, 8, 8, 8, 16, 7, 9, 1000])
                getattr(message, field.name).extend(random_scalar(rng, field) if n < 20 and
                                                    rng.random() < 0.3 else
                                                    (rng.uniform(-1, 1)
                                                     if field.cpp_type == field.CPPTYPE_FLOAT or
                                                     field.cpp_type == field.CPPTYPE_DOUBLE
                                                     else random_scalar(rng, field))
                                                    for _ in range(n))
        elif is_message:
            if depth < 3:
                fill(rng, getattr(message, field.name), depth + 1, store)
                if not message.HasField(field.name):
                    getattr(message, field.name).SetInParent()
        else:
            try:
                setattr(message, field.name, random_scalar(rng, field))
            except (ValueError, TypeError):
                pass  # A string that is not UTF-8, say: protobuf refuses it.


def mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 5])):
        kind = rng.randrange(4)
        if kind == 0 and data:
            data[rng.randrange(len(data))] = rng.getrandbits(8)
        elif kind == 1 and data:
            del data[rng.randrange(len(data)):]
        elif kind == 2:
            data += random_message(rng)
        else:
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.choice([1, 4, 20]))
    return bytes(data)
