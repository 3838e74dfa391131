"""Argument types and the parser of the command line: a bad value is refused before
anything starts, in one line naming the argument and what is wrong with it."""

from __future__ import annotations

import argparse
from typing import NoReturn

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (with where to look), not usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def port_number(text: str) -> int:
    """A port to listen on: 0-65535, 0 for any free one."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number 0-65535") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port number 0-65535 (0: any free port)")
    return port


def _whole_number(text: str, least: int, wanted: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be {wanted}, not {value}")
    return value


def at_least_one(text: str) -> int:
    return _whole_number(text, 1, "at least 1")


def zero_or_more(text: str) -> int:
    return _whole_number(text, 0, "0 or more")


def _seconds(text: str, zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (value >= 0 if zero else value > 0):
        wanted = "0 seconds or more" if zero else "more than 0 seconds"
        raise argparse.ArgumentTypeError(f"must be {wanted}, not {text}")
    return value


def positive_seconds(text: str) -> float:
    return _seconds(text, zero=False)


def zero_or_more_seconds(text: str) -> float:
    return _seconds(text, zero=True)


def _host_port(text: str, example: str) -> str:
    """One HOST:PORT (IPv6 as [::1]:PORT), as gRPC takes it: no scheme."""
    if "://" in text:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give HOST:PORT with no scheme ({text.split('://')[0]}://), {example}"
        )
    host, colon, port = text.rpartition(":")
    bare_ipv6 = ":" in host and not (host.startswith("[") and host.endswith("]"))  # ::1, not [::1]:PORT
    if not colon or bare_ipv6:
        raise argparse.ArgumentTypeError(f"{text!r} has no port: give HOST:PORT, {example}")
    if not host.strip("[]"):
        raise argparse.ArgumentTypeError(f"{text!r} has no host: give HOST:PORT, {example}")
    if not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: the port {port!r} is not a number 1-65535, {example}")
    if not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: the port {port} is not a port number 1-65535")
    return text


GRPC_SCHEMES = ("dns:", "ipv4:", "ipv6:")  # gRPC target URIs balanced over (clients/channels.py)


def target_address(text: str) -> str:
    """The server(s) to call: HOST:PORT (IPv6 as [::1]:PORT); several replicas as
    HOST:PORT,HOST:PORT; or a gRPC target URI dns:///HOST:PORT, ipv4:A:P,A:P, ipv6:[A]:P,..."""
    example = "e.g. 127.0.0.1:50051 or 10.0.0.1:50051,10.0.0.2:50051"
    if text.startswith(GRPC_SCHEMES):
        scheme, _, rest = text.partition(":")
        if scheme == "dns":
            name = rest.removeprefix("//").split("/", 1)[-1] if rest.startswith("//") else rest
            _host_port(name, "e.g. dns:///replicas.example:50051")
        else:
            for part in rest.split(","):
                _host_port(part, f"e.g. {scheme}:10.0.0.1:50051,10.0.0.2:50051")
        return text
    parts = text.split(",")
    if len(parts) > 1 and not all(p.strip() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: an empty entry in the list, {example}")
    return ",".join(_host_port(part.strip(), example) for part in parts)
