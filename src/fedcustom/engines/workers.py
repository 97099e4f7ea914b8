"""A round's clients in worker processes: the in-process engine's `workers`, on one machine.

The pool forks its processes once per run, at the first round, when the model is built, prepared
and evaluated: each worker sees the server's `Clients` (the frozen base model, the encoded data,
every client's rows) copy-on-write, so nothing of them is pickled and the base model's memory is
shared (its weights are only read). Each round a worker receives (round, the serialized global
state, its clients, the instructions) and answers with a Reply per client made exactly as in the
server's process (`train_each`). A client's work depends only on what it receives and on its seed
(fit_context), and the server takes the replies in the order of the clients asked, so the numbers
are those of one process. A worker sends each client's reply as soon as that client is done, and
the server hands it to the round at once (rounds.Receive): neither side holds a round's payloads,
which with many clients would be the largest thing in memory.

Each worker computes on ONE torch thread: GNU OpenMP (torch's CPU threads) is not fork-safe, and
a forked process that runs more than one OpenMP thread after its parent did hangs. Pipes carry
pickled messages between processes of this one program; an update inside a Reply is the same
serialized payload as ever. A worker that dies (killed, out of memory) ends the run with
WorkerDied, never a hang.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import signal
import traceback
from collections.abc import Callable, Iterator
from contextlib import suppress
from functools import partial
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any

import torch
from tqdm.auto import tqdm

from fedcustom.core.errors import UserError
from fedcustom.core.log import no_bars
from fedcustom.core.payload import deserialize, serialize
from fedcustom.core.types import Instructions, State
from fedcustom.federation.replies import Failure, Receive, Reply, RoundReplies
from fedcustom.federation.rounds import Clients, RoundFailed, client_update, fit_context


def train_each(clients: Clients, server_round: int, state: State, cids: list[int],
               instructions: Instructions) -> Iterator[tuple[int, Reply]]:
    """Clients `cids`, one after another in this process, each from the global `state`: each
    client's reply as soon as it is done (whoever consumes it decides what to keep)."""
    for cid in cids:
        ctx = fit_context(clients.seed, server_round, cid, instructions)
        try:
            update, local = client_update(clients, state, ctx)
        except Exception as e:  # noqa: BLE001 - a failing client must not end the round
            yield cid, Reply(failure=Failure(repr(e), e))
            continue
        payload = serialize(update)
        del update  # its tensors go before the consumer takes the bytes
        yield cid, Reply(payload, local, len(clients.rows[cid]))


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def assign(cids: list[int], sizes: list[int], workers: int) -> list[list[int]]:
    """Clients to workers, the largest first to the least loaded: balanced work, a fixed answer.
    (Which worker trains a client changes none of its numbers.)"""
    loads, shares = [0] * workers, [[] for _ in range(workers)]
    for cid in sorted(cids, key=lambda c: (-sizes[c], c)):
        least = loads.index(min(loads))
        shares[least].append(cid)
        loads[least] += sizes[cid]
    return [sorted(share) for share in shares]


class WorkerDied(RoundFailed):
    """A worker process ended without answering (killed, out of memory): the run stops after its
    last checkpoint."""


class WorkerTraceback(Exception):
    """A client's traceback as its worker process formatted it (the cause of the re-raised error)."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0])


def portable(e: Exception) -> Exception:
    """`e`, or an exception of the same kind and message that survives pickling (the server
    re-raises it when every client of a round fails, as it does in process)."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001 - any exception that cannot cross a pipe
        return UserError(str(e)) if isinstance(e, UserError) else RuntimeError(repr(e))


# a worker's work on one task: its messages, ending with ("done", None)
Job = Callable[[Any], Iterator[tuple[str, Any]]]


def answers(clients: Clients, task: tuple[int, bytes, list[int], Instructions]) -> Iterator[tuple[str, Any]]:
    """A worker's messages for one round: ("reply", (cid, reply, traceback or None)) for each client
    as soon as it is done, then ("done", None)."""
    server_round, down, cids, instructions = task
    for cid, reply in train_each(clients, server_round, deserialize(down), cids, instructions):
        failure, tb = reply.failure, None
        if failure is not None and failure.exception is not None:
            exc = failure.exception
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            reply.failure = Failure(failure.message, portable(exc))
        yield "reply", (cid, reply, tb)
    yield "done", None


def each_client(fn: Callable[[int], Any]) -> Job:
    """A worker's job for a list of clients: ("reply", (cid, fn(cid))) for each as soon as it is
    done, then ("done", None)."""
    def job(cids: list[int]) -> Iterator[tuple[str, Any]]:
        for cid in cids:
            yield "reply", (cid, fn(cid))
        yield "done", None
    return job


def serve(job: Job, conn: Connection, inherited: list[Connection]) -> None:
    """A worker process: run `job` on each task it is sent, until told to stop or the server is gone."""
    for end in inherited:  # the server's ends of every pipe: EOF here when the server dies
        end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server, which stops its workers
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    gc.freeze()  # inherited objects stay out of this process's collections: their pages stay shared
    torch.set_num_threads(1)
    no_bars()
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        if not send_each(conn, job(task)):
            return


def send_each(conn: Connection, messages: Iterator[tuple[str, Any]]) -> bool:
    """Send a round's messages as they come, through "done" or the first "error"; False when the
    server is gone."""
    while True:
        try:
            message = next(messages)
        except Exception:  # noqa: BLE001 - the worker itself failed: the server raises it
            message = ("error", traceback.format_exc())
        try:
            conn.send(message)
        except OSError:  # the server is gone
            return False
        except Exception:  # noqa: BLE001 - a reply that cannot be pickled
            message = ("error", traceback.format_exc())
            conn.send(message)
        if message[0] in ("done", "error"):
            return True


class WorkerPool:
    """`size` worker processes for one run's clients; a context manager that always stops them.
    Each worker runs `job` on the tasks it is sent: by default a round's training (`train_clients`);
    `each_client(fn)` makes it a map over clients (`map`)."""

    def __init__(self, clients: Clients, size: int, job: Job | None = None) -> None:
        self.clients, self.size = clients, size
        self.job = job or partial(answers, clients)
        self.workers: list[tuple[BaseProcess, Connection]] = []

    def start(self) -> None:
        context = multiprocessing.get_context("fork")
        ends: list[Connection] = []
        # A worker inherits every lock as it is at the fork: tqdm's (its monitor thread takes it
        # now and then) is held here meanwhile, so no worker starts with it taken by a thread it lacks.
        with tqdm.get_lock():
            for i in range(self.size):
                here, there = context.Pipe()
                ends.append(here)
                process = context.Process(target=serve, args=(self.job, there, list(ends)),
                                          name=f"fedcustom-worker-{i}", daemon=True)
                process.start()
                there.close()
                self.workers.append((process, here))

    def train_clients(self, server_round: int, down: bytes, cids: list[int],
                      instructions: Instructions, receive: Receive) -> RoundReplies:
        got: dict[int, Reply] = {}
        for body in self.exchange(cids, lambda share: (server_round, down, share, instructions),
                                  f"round {server_round}"):
            cid, reply = received(*body)
            got[cid] = receive(cid, reply)  # handed to the round as it comes
        return RoundReplies({cid: got[cid] for cid in cids})  # in the order asked, as in process

    def map(self, cids: list[int], where: str) -> Iterator[tuple[int, Any]]:
        """(cid, fn(cid)) for every client, in the order they finish (the job is `each_client(fn)`)."""
        yield from self.exchange(cids, lambda share: share, where)

    def exchange(self, cids: list[int], task: Callable[[list[int]], Any], where: str) -> Iterator[Any]:
        """Send each worker `task(its share of cids)`; yield the body of every reply as it comes,
        until each worker is done. A worker's error or death raises, named by `where`."""
        if not self.workers:
            self.start()
        shares = assign(cids, [len(rows) for rows in self.clients.rows], self.size)
        busy: dict[Connection, tuple[BaseProcess, list[int]]] = {}
        for (process, conn), share in zip(self.workers, shares, strict=True):
            if share:
                try:
                    conn.send(task(share))
                except OSError:
                    raise self.died(process, where, share) from None
                busy[conn] = (process, share)
        while busy:
            ready = set(wait([*busy, *(process.sentinel for process, _ in busy.values())]))
            for conn, (process, share) in list(busy.items()):
                if conn in ready or (process.sentinel in ready and conn.poll()):
                    try:
                        kind, body = conn.recv()
                    except (EOFError, OSError):
                        raise self.died(process, where, share) from None
                    if kind == "error":
                        raise RuntimeError(f"{where}: simulation worker {process.pid} failed:\n{body}")
                    if kind == "done":
                        del busy[conn]
                    else:
                        yield body
                elif process.sentinel in ready:
                    raise self.died(process, where, share)

    @staticmethod
    def died(process: BaseProcess, where: str, share: list[int]) -> WorkerDied:
        process.join(timeout=5)
        code = process.exitcode
        how = "still running" if code is None else f"exit code {code}" if code >= 0 else \
            f"signal {signal_name(-code)}"
        hint = " (the out-of-memory killer sends SIGKILL: fewer workers need less memory)" \
            if code == -9 else ""
        clients = ", ".join(map(str, share[:8])) + (", ..." if len(share) > 8 else "")
        return WorkerDied(f"{where}: simulation worker {process.pid} died ({how}) while training "
                          f"clients [{clients}]{hint}; the work finished before it is saved: "
                          "`fedcustom run --resume RUN_DIR` goes on (workers = 1 trains in one process)")

    def close(self, now: bool = False) -> None:
        """Stop every worker: after its current task, or `now` (the run is ending on an error)."""
        for _, conn in self.workers if not now else []:
            with suppress(OSError):
                conn.send(None)
        for process, conn in self.workers:
            if not now:
                process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
            conn.close()
        self.workers = []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(now=kind is not None)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # e.g. a real-time signal
        return str(number)


def received(cid: int, reply: Reply, tb: str | None) -> tuple[int, Reply]:
    """A worker's reply, a failure's exception carrying the traceback it had there."""
    if tb is not None and reply.failure is not None and reply.failure.exception is not None:
        reply.failure.exception.__cause__ = WorkerTraceback(tb)
    return cid, reply
