"""The run's clock and its TensorBoard events, read back with tensorboard's own reader."""

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from nested_tnt_jax import metrics


@pytest.fixture
def clock(monkeypatch):
    """`time.perf_counter` as seen by `metrics`, moved by hand."""
    now = [100.0]
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: now[0])
    return now


def test_chrono_times_training_only_from_its_start(clock):
    chrono = metrics.Chrono()
    assert not chrono.started and chrono.interval_rate(5) is None and chrono.timed(5) == (0, 0.0)
    chrono.start(1)  # after step 1, which compiled
    clock[0] += 2.0  # steps 2..5
    assert chrono.interval_rate(5) == pytest.approx(4 / 2.0)
    chrono.pause()
    clock[0] += 50.0  # an evaluation and a checkpoint save: not training
    chrono.resume()
    clock[0] += 3.0  # steps 6..8
    assert chrono.interval_rate(8) == pytest.approx(3 / 3.0)
    assert chrono.timed(8) == (7, pytest.approx(5.0))
    chrono.pause()
    chrono.pause()  # a second pause adds nothing
    clock[0] += 10.0
    assert chrono.timed(8) == (7, pytest.approx(5.0))


def test_events_hold_the_scalars_and_the_hparams(tmp_path):
    writer = metrics.EventWriter(str(tmp_path))
    writer.write_hparams({"optim.learning_rate": 0.5, "model.name": "vit", "seed": 3})
    for step, loss in ((2, 1.5), (4, 0.75)):
        writer.write_scalars(step, {"train/loss": loss, "eval/top1": step / 10})
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    events.Reload()
    assert {"train/loss", "eval/top1", hparams_metadata.SESSION_START_INFO_TAG} <= set(
        events.Tags()["tensors"]
    )
    losses = [(e.step, e.tensor_proto.float_val[0]) for e in events.Tensors("train/loss")]
    assert losses == [(2, 1.5), (4, 0.75)]
    start = hparams_metadata.parse_session_start_info_plugin_data(
        events.SummaryMetadata(hparams_metadata.SESSION_START_INFO_TAG).plugin_data.content
    )
    assert start.hparams["optim.learning_rate"].number_value == 0.5
    assert start.hparams["model.name"].string_value == "vit"
