"""OBSPA's Hessians, the two-phase reconstruction and ``spa.finetune`` (plain and distilled) under
``MultiWorkerMirroredStrategy``: two worker processes on localhost (``TF_CONFIG`` on ports picked here)
give the plan and the weights of one process."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

JOB = textwrap.dedent("""
    import json, os, sys
    import tensorflow as tf

    out_path = sys.argv[1]
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if "TF_CONFIG" in os.environ else None
    import keras, numpy as np, spa_keras as spa
    from keras import layers as L

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(16, 3, padding="same", activation="relu")(inp)  # no BatchNorm: its batch statistics are
    x = L.Conv2D(16, 3, padding="same", activation="relu")(x)  # each replica's own in data-parallel training
    model = keras.Model(inp, L.Dense(4)(L.GlobalAveragePooling2D()(x)))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 4, 64)
    plan = spa.plan(model, ratio=0.5, algorithm="obspa", calibration_data=x, verbose=False,
                    algorithm_options={"strategy": strategy, "batch_size": 16})
    slim = spa.apply(plan)
    rebuilt = spa.prune(model, ratio=0.5, algorithm="reconstruct", calibration_data=x, verbose=False,
                        algorithm_options={"strategy": strategy, "batch_size": 16, "epochs": (2, 2)})
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    tuned, _ = spa.finetune(slim, data, epochs=1, optimizer="sgd", learning_rate=0.05, strategy=strategy,
                            verbose=0)
    distilled, _ = spa.finetune(slim, data, epochs=1, teacher=model, optimizer="sgd", learning_rate=0.05,
                                strategy=strategy, verbose=0)
    with open(out_path, "w") as f:
        json.dump({"removed": {k: v.tolist() for k, v in plan.removed().items()},
                   "pruned": [w.tolist() for w in slim.get_weights()],
                   "reconstructed": [w.tolist() for w in rebuilt.get_weights()],
                   "tuned": [w.tolist() for w in tuned.get_weights()],
                   "distilled": [w.tolist() for w in distilled.get_weights()],
                   "replicas": 1 if strategy is None else strategy.num_replicas_in_sync}, f)
""")


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_give_the_plan_and_weights_of_one_process(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(JOB)
    base = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "single.json")], env=base,
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for i in range(2):
        env = dict(base, TF_CONFIG=json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path / f"worker{i}.json")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        try:
            _, err = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-1500:] + err[:3000]
    want = json.loads((tmp_path / "single.json").read_text())
    for i in range(2):
        got = json.loads((tmp_path / f"worker{i}.json").read_text())
        assert got["replicas"] == 2
        assert got["removed"] == want["removed"]
        for key in ("pruned", "reconstructed", "tuned", "distilled"):
            assert len(got[key]) == len(want[key])
            for a, b in zip(got[key], want[key]):
                np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-5, err_msg=key)
