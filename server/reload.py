"""Which model versions serve, and changing them while the server runs (as TF Serving does).

`Reloader.reconcile` compares the repository on disk (server/repository.py `scan`) with what
serves, under the version policy:
- a version the policy wants and that is not serving is loaded (its checksums verified by
  `zoo.bundle.load_bundle`), its runtime built and its decode engine compiled on a loader
  thread, and only then added: it takes no request before it is ready;
- a version the policy no longer wants (removed from disk, or beyond `latest:N`) is taken out of
  service once the versions replacing it serve: new requests no longer reach it, the RPCs in
  flight on it finish, and then it is closed and dropped;
- a version that fails to load (half-written, corrupt, not a bundle) is logged once and skipped
  until its files change; the policy then picks among the versions that do load, so a bad new
  version leaves the previous one serving, and every other model serves on.

The server reconciles at start-up, every `--poll-seconds`, and on SIGHUP.
"""

import asyncio
import dataclasses
import logging
import re

from server.repository import LoadedModel, scan
from server.runtimes import build
from zoo.bundle import load_bundle
from zoo.errors import ZooError

log = logging.getLogger("zoo.serve")


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """`all`, `latest:N` (the N highest versions of each model) or `specific:V,...` (these)."""

    kind: str
    count: int = 0
    versions: frozenset = frozenset()

    @classmethod
    def parse(cls, text):
        text = text.strip()
        if text == "all":
            return cls("all")
        if m := re.fullmatch(r"latest:(\d+)", text):
            if int(m.group(1)) < 1:
                raise ZooError(f"--version-policy {text}: latest:N needs N >= 1")
            return cls("latest", count=int(m.group(1)))
        if m := re.fullmatch(r"specific:(\d+(?:,\d+)*)", text):
            return cls("specific", versions=frozenset(int(v) for v in m.group(1).split(",")))
        raise ZooError(f"--version-policy {text!r}: expected all, latest:N or specific:V[,V...]")

    def choose(self, versions):
        """The versions to serve of one model, given those that load."""
        if self.kind == "all":
            return set(versions)
        if self.kind == "latest":
            return set(sorted(versions)[-self.count:])
        return set(versions) & self.versions

    def __str__(self):
        if self.kind == "latest":
            return f"latest:{self.count}"
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, sorted(self.versions)))
        return "all"


class Reloader:
    """Keeps `repository` (server.repository.Repository) in step with the directory at `path`.

    `settings`: server.runtimes.Settings for new runtimes; `executor`: the thread that loads;
    `warmup`: compile decode engines before a version serves; `on_change(names)`: a coroutine
    function awaited after a reconcile with every model name ever seen (to update health)."""

    def __init__(self, path, policy, repository, settings, executor, warmup=True, on_change=None):
        self.path, self.policy, self.repository = path, policy, repository
        self.settings, self.executor, self.warmup, self.on_change = settings, executor, warmup, on_change
        self.failed = {}  # (name, version) -> the Found that failed; retried once its files change
        self.seen = set()  # every model name found on disk
        self.retiring = set()  # tasks closing versions taken out of service
        self.lock = asyncio.Lock()  # one reconcile at a time

    async def reconcile(self):
        """One pass; returns the number of versions loaded and retired."""
        async with self.lock:
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(self.executor, scan, self.path)
            loaded = retired = 0
            while True:  # a version failing to load changes what the policy picks: choose again
                wanted = self._wanted(found)
                new = [f for f in found if (f.name, f.version) in wanted
                       and f.version not in self.repository.versions(f.name)]
                if not new:
                    break
                for f in new:
                    loaded += await self._load(f)
            for runtime in list(self.repository.all()):
                m = runtime.model
                if (m.name, m.version) not in wanted:
                    self._retire(runtime)
                    retired += 1
            if self.on_change is not None:
                await self.on_change(sorted(self.seen))
            return loaded, retired

    def _wanted(self, found):
        """{(name, version)} the policy picks among the versions that are published and did not fail."""
        loadable = {}
        for f in found:
            self.seen.add(f.name)
            failure = self.failed.get((f.name, f.version))
            if failure is not None and failure.fingerprint == f.fingerprint:
                continue
            if not f.published:
                self._skip(f, "no zoo.json yet (a bundle being written? publish by renaming it into place)")
                continue
            loadable.setdefault(f.name, []).append(f.version)
        return {(name, v) for name, versions in loadable.items() for v in self.policy.choose(versions)}

    def _skip(self, f, reason):
        self.failed[(f.name, f.version)] = f
        log.error("model %s version %d: not loaded: %s (%s)", f.name, f.version, reason, f.path)

    async def _load(self, f):
        """Loads and warms up version `f`, then serves it; 1 if it serves, 0 if it failed."""
        loop = asyncio.get_running_loop()
        try:
            runtime, compiled = await loop.run_in_executor(self.executor, self._load_blocking, f)
        except Exception as error:  # noqa: BLE001 (any failure of one bundle leaves the others serving)
            self._skip(f, str(error) if isinstance(error, ZooError) else f"{type(error).__name__}: {error}")
            return 0
        self.failed.pop((f.name, f.version), None)
        self.repository.add(runtime)
        info = runtime.model.info
        log.info("model %s version %d: serving (%s, task %s) from %s%s", f.name, f.version, info.kind, info.task,
                 f.path, "" if compiled is None else f"; decode engine compiled in {compiled[0]:.1f}s "
                                                     f"({compiled[1]} functions)")
        return 1

    def _load_blocking(self, f):
        model, tokenizer, info = load_bundle(f.path)
        runtime = build(LoadedModel(f.name, f.version, f.path, model, tokenizer, info), self.settings)
        return runtime, runtime.warmup() if self.warmup else None

    def _retire(self, runtime):
        m = runtime.model
        self.repository.remove(m.name, m.version)
        log.info("model %s version %d: out of service; unloading once its %d RPCs in flight finish", m.name,
                 m.version, runtime.in_flight)

        async def close():
            await runtime.finished()
            runtime.close()
            log.info("model %s version %d: unloaded", m.name, m.version)

        task = asyncio.get_running_loop().create_task(close())
        self.retiring.add(task)
        task.add_done_callback(self.retiring.discard)

    async def watch(self, poll_seconds, wake):
        """Reconciles every `poll_seconds` (0: never by itself) and whenever `wake` (an asyncio.Event) is set."""
        while True:
            try:
                await asyncio.wait_for(wake.wait(), poll_seconds or None)
            except asyncio.TimeoutError:
                pass
            wake.clear()
            try:
                await self.reconcile()
            except ZooError as error:  # the repository itself is gone or unreadable: serve on as is
                log.error("repository %s: %s; serving on with the loaded versions", self.path, error)
            except Exception:  # noqa: BLE001 (a reload must never stop the server)
                log.exception("reloading %s failed; serving on with the loaded versions", self.path)
