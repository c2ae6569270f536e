"""
What the benchmark scripts share: a free port on 127.0.0.1, and the CPU time
of a broker process as the kernel accounts it in C{/proc/PID/stat}.
"""

import os
import socket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    """
    A TCP port of 127.0.0.1 that nothing listens on now.
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def stat_fields(pid):
    """
    The fields of C{/proc/PID/stat} after the command name: C{[0]} is the
    state, C{[1]} the parent pid, C{[11]} and C{[12]} user and system
    clock ticks.

    @raise OSError: when there is no such process.
    """
    with open("/proc/{}/stat".format(pid)) as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_times(pid, fields=None):
    """
    C{(user, system)} CPU seconds of process C{pid} (from C{fields} when
    given, as L{stat_fields} returns them).
    """
    if fields is None:
        fields = stat_fields(pid)
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


def cpu_seconds(pid):
    """
    User + system CPU seconds of process C{pid}.
    """
    return sum(cpu_times(pid))
