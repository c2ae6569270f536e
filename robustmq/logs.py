# -*- test-case-name: tests.test_tap -*-
"""
The log observer twistd uses for the broker: the C{[log]} section (level,
file) applied to every event of the process.
"""

import sys

from twisted.logger import (
    FilteringLogObserver, LogLevel, LogLevelFilterPredicate, textFileLogObserver,
)
from twisted.python.logfile import LogFile

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}


def observer_factory(log_config, twistd_options):
    """
    A no-argument callable for twistd's C{logger} option: events at or above
    C{log_config.level} go to C{log_config.file}, or, when that is empty, where
    twistd would put them (C{--logfile}; stdout with C{-n}).
    """

    def make_observer():
        path = log_config.file or twistd_options.get("logfile")
        if path == "-" or (not path and twistd_options.get("nodaemon")):
            out = sys.stdout
        else:
            out = LogFile.fromFullPath(path or "twistd.log", rotateLength=10 * 1024 * 1024,
                                       maxRotatedFiles=10)
        predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[log_config.level])
        return FilteringLogObserver(textFileLogObserver(out), [predicate])

    return make_observer
