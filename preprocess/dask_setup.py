"""The Dask side of :func:`preprocess.run.run` that is not the tasks: connecting to a ``--scheduler`` with a short
timeout, checking that its workers see the run's paths before any scene starts, starting local worker processes
that leave Ctrl-C to the driver, closing a cluster quietly after one, and passing the workers' one-line notices
(kernel compilation) on to the driver's log. See docs/preprocess.md, "Running on a cluster".
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from shared.errors import ConfigError, InputError

#: Seconds to wait for the scheduler given with ``--scheduler`` to answer, and then for a first worker to join
#: it (``--connect-timeout``).
CONNECT_TIMEOUT_S = 10.0

#: A path a worker must be able to use: (what, path, need) with need ``folder`` (exists), ``file`` (exists,
#: readable) or ``writable`` (a folder it can create files in).
PathCheck = tuple[str, str, str]


async def _probe(address: str, timeout: float) -> None:
    from distributed.comm import connect
    from distributed.security import Security

    comm = await connect(address, timeout=timeout, **Security().get_connection_args("client"))
    await comm.close()


def check_scheduler(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """:class:`ConfigError` when ``address`` is not a Dask address (``tcp://HOST:PORT``, ``HOST:PORT``, another
    scheme Dask knows, ``inproc://`` of this process) or ``timeout`` is not a number of seconds > 0 (checked before
    anything else: connecting comes later)."""
    from distributed.comm.addressing import get_address_host_port, parse_address
    from distributed.comm.registry import get_backend

    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigError("--connect-timeout", timeout, "must be a number of seconds > 0")
    try:
        scheme, _ = parse_address(address)
        get_backend(scheme)
        if scheme != "inproc":
            get_address_host_port(address)
    except (ValueError, TypeError) as exc:
        raise ConfigError("--scheduler", address, f"not a Dask scheduler address, e.g. tcp://HOST:8786 ({exc})"
                          ) from None


def connect_scheduler(address: str, timeout: float = CONNECT_TIMEOUT_S):
    """A :class:`distributed.Client` of the scheduler at ``address`` with at least one worker.
    :class:`ConfigError` naming ``--scheduler`` when the address is malformed, when no scheduler answers within
    ``timeout`` seconds, or when no worker has joined it within ``timeout`` seconds more."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from distributed import Client

    check_scheduler(address, timeout)
    try:  # a bare connection first: a failed Client prints a traceback when it is garbage-collected
        with ThreadPoolExecutor(1) as ex:  # its own event loop, whether or not the caller runs one
            ex.submit(asyncio.run, _probe(address, timeout)).result()
        client = Client(address, timeout=timeout)
    except Exception as exc:
        raise ConfigError("--scheduler", address, f"no Dask scheduler answered within {timeout:g} s "
                          f"({type(exc).__name__}: {exc}); start one (dask scheduler) or raise --connect-timeout"
                          ) from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except Exception:
        client.close()
        raise ConfigError("--scheduler", address, f"no worker joined this scheduler within {timeout:g} s "
                          "(start one: dask worker ADDRESS)") from None
    return client


def _problem(path: str, need: str) -> str | None:
    if need == "file":
        return None if os.path.isfile(path) and os.access(path, os.R_OK) else "no such file there"
    if not os.path.isdir(path):
        return "no such folder there"
    if need == "writable" and not os.access(path, os.W_OK | os.X_OK):
        return "not writable there"
    return None


def path_problems(checks: Sequence[PathCheck]) -> list[tuple[str, str, str]]:
    """(what, path, why) of each check that fails in this process: what a worker runs (:func:`require_visible`)."""
    return [(what, path, why) for what, path, need in checks if (why := _problem(path, need)) is not None]


def require_visible(client, checks: Sequence[PathCheck]) -> None:
    """Run :func:`path_problems` on every worker of ``client``; :class:`InputError` naming the first worker and
    path at fault (and how many more there are) when any worker cannot use a path."""
    found = client.run(path_problems, list(checks))
    bad = [(addr, *p) for addr, probs in sorted(found.items()) for p in probs]
    if not bad:
        return
    addr, what, path, why = bad[0]
    more = f"; {len(bad) - 1} more such problem(s) on {len({b[0] for b in bad})} worker(s)" if len(bad) > 1 else ""
    raise InputError(f"Dask worker {addr} cannot see the {what} ({why}){more}; every worker must see the "
                     "dataroot and the store at the driver's absolute paths (a shared filesystem)", path)


def dataroot_checks(dataroot: str, version: str, point_file: str | None) -> list[PathCheck]:
    """What a worker reads: the dataroot, its version folder and (when the driver sees one) a point file."""
    checks = [("dataroot", str(dataroot), "folder"), ("dataroot", os.path.join(dataroot, version), "folder")]
    return checks + ([("dataroot's point file", str(point_file), "file")] if point_file else [])


def store_checks(vdir: str) -> list[PathCheck]:
    """What a worker writes into: the store version just created on the driver (its version.json, shards/)."""
    return [("store version", os.path.join(vdir, "version.json"), "file"),
            ("store's shards folder", os.path.join(vdir, "shards"), "writable")]


@contextmanager
def children_ignore_sigint() -> Iterator[None]:
    """Processes started in the block ignore SIGINT (an ignored signal stays ignored in the processes that
    multiprocessing spawns): a Ctrl-C in the terminal, which goes to the whole process group, then interrupts only
    the driver, which closes the cluster quietly, instead of every worker printing its traceback. A Ctrl-C during
    the block (the cluster's start) is ignored. A no-op outside the main thread (signals belong to it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def start_quiet_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (the process that removes the named semaphores of processes that
    died) with its "leaked semaphore objects" warning off, unless it runs already. A local worker killed while
    the cluster stops after a Ctrl-C leaves the lock that numcodecs' Blosc made, which the tracker then removes,
    warning about it on the terminal after the run's last line; the removal is all the user needs."""
    from multiprocessing import resource_tracker

    key, before = "PYTHONWARNINGS", os.environ.get("PYTHONWARNINGS")
    os.environ[key] = ",".join(filter(None, [before, "ignore::UserWarning:multiprocessing.resource_tracker"]))
    try:
        resource_tracker.ensure_running()
    finally:
        if before is None:
            del os.environ[key]
        else:
            os.environ[key] = before


def _silence() -> None:
    logging.disable(logging.CRITICAL)


@contextmanager
def quiet_logs(client=None) -> Iterator[None]:
    """No log output in this process during the block (closing a cluster whose tasks were interrupted logs
    warnings about cancelled tasks that tell the user nothing), and none from then on in the workers of
    ``client`` (a local cluster about to be closed; never pass the client of a user's cluster)."""
    before = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        if client is not None:
            try:
                client.run(_silence)
            except Exception:  # workers already gone: nothing left to silence
                pass
        yield
    finally:
        logging.disable(before)


#: Dask event topic of the workers' notices for the driver's log.
NOTICE_TOPIC = "calico-notice"


def notify_driver(message: str) -> None:
    """Send a one-line notice from a worker task to the driver's log (:func:`forward_notices`)."""
    from distributed import get_worker

    get_worker().log_event(NOTICE_TOPIC, message)


@contextmanager
def forward_notices(client, log: Callable[[str], object]) -> Iterator[None]:
    """During the block, each distinct notice sent by :func:`notify_driver` goes to ``log`` once (several workers
    compiling at the same time say it once)."""
    seen: set[str] = set()

    def handler(event) -> None:
        _, msg = event
        if msg not in seen:
            seen.add(msg)
            log(msg)

    client.subscribe_topic(NOTICE_TOPIC, handler)
    try:
        yield
    finally:
        client.unsubscribe_topic(NOTICE_TOPIC)
