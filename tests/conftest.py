"""Tests run on CPU with 4 virtual devices, so sharded code paths are exercised without a GPU.

XLA's backend (LLVM) optimisation is off: the suite's time is mostly compiling small programs, not running them, and
level 0 cut the default run from 1,326 to 1,141 s on the 2-core CI machine (2026-12-02; tolerances are unchanged).

Each test process keeps a persistent XLA compilation cache for the session: many tests build the same small models
in new Experiments (new jitted closures, same programs), and compiling them dominates the suite's time on CPU.
"""

import os
import signal

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
                           " --xla_backend_optimization_level=0").strip()


import jax  # noqa: E402
import pytest  # noqa: E402
from jax.experimental.compilation_cache import compilation_cache  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def compile_once(tmp_path_factory):
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {name: getattr(jax.config, name) for name in names}
    compilation_cache.reset_cache()
    for name, value in zip(names, (str(tmp_path_factory.mktemp("xla_cache")), 0.0, 0)):
        jax.config.update(name, value)
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture(autouse=True)
def signal_handlers_put_back():
    """Each test starts with the handlers the session had: ``cli.run`` installs a SIGTERM handler for the rest of its
    process (``raise_on_sigterm``), which a later test in the same worker would otherwise meet (the resume test
    asserts that the loop leaves SIGTERM at its default, and failed that way after an in-process ``cli.run``)."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)
