import logging

from agent.trials import _Progress


def test_progress_echoes_a_line_once_then_a_heartbeat_only_when_it_stands(tmp_path, caplog):
    log = tmp_path / "stdout.log"
    log.write_text("12:00:00 probe transformer step 1/4 6.8 s\n")
    progress = _Progress("00-baseline", log, every_s=0.0, quiet_s=3600.0)
    with caplog.at_level(logging.INFO, logger="agent.trials"):
        for _ in range(3):
            progress.show()
        log.write_text(log.read_text() + "12:00:07 probe transformer step 2/4 6.8 s\n")
        progress.show()
        progress.show()
    assert [r.getMessage() for r in caplog.records] == [
        "[00-baseline] probe transformer step 1/4 6.8 s",
        "[00-baseline] probe transformer step 2/4 6.8 s",
    ]
    caplog.clear()
    progress.quiet_s = 0.0  # a line that stands is echoed again, saying so
    with caplog.at_level(logging.INFO, logger="agent.trials"):
        progress.show()
    assert caplog.records[0].getMessage().startswith("[00-baseline] still at: probe transformer step 2/4 6.8 s (")
