"""One process of a 2-process CPU training job (gloo collectives), or with process id -1 the same job as one process
of 4 devices; started by test_multiprocess.py."""

import os
import sys

ALONE = sys.argv[1] == "-1"
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={4 if ALONE else 2}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main(process_id: int, port: int, data_root: str, workdir: str) -> None:
    from ssm_jax.training.mesh import initialize_distributed
    from ssm_jax.training.run import Experiment
    from tests.training.conftest import make_tiny_config

    if not ALONE:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        os.environ.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                          JAX_PROCESS_ID=str(process_id))
        initialize_distributed()
    assert jax.process_count() == (1 if ALONE else 2) and jax.device_count() == 4
    experiment = Experiment(make_tiny_config(data_root, max_steps=6), workdir)
    experiment.train()
    summary = experiment.evaluate()
    leaves = jax.tree.leaves(jax.device_get(experiment.state.params))
    checksum = sum(float(abs(x).sum()) for x in leaves)
    print(f"RESULT process={process_id} checksum={checksum!r} images={summary.get('num_images', -1)}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
