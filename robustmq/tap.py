# -*- test-case-name: tests.test_tap -*-
"""
The C{twistd robustmq} command: options, config validation and the service.
"""

import sys

from twisted.logger import ILogObserver
from twisted.python import usage
from twisted.python.components import Componentized

from robustmq.config import ConfigError, load_config
from robustmq.logs import observer_factory
from robustmq.network.service import ListenError
from robustmq.security import PasswordFileError, parse_password_file
from robustmq.server import BrokerServer
from robustmq.storage.errors import StorageError


class Options(usage.Options):
    """
    C{twistd robustmq [--config FILE]}. The whole config is validated here,
    before anything is built or bound; problems go to stderr, one per line,
    and the process exits with status 2.
    """

    synopsis = "[--config FILE]"
    longdesc = (
        "Run the robustmq broker (MQTT, Kafka wire protocol, AMQP 0-9-1). "
        "Without --config the embedded defaults are used."
    )
    optParameters = [
        ["config", "c", None, "Path of the TOML config file (default: embedded defaults)."],
    ]

    def postOptions(self):
        try:
            self.broker_config = load_config(self["config"])
            check_password_file(self.broker_config.security, self.broker_config.admin)
        except ConfigError as e:
            for line in e.problems:
                sys.stderr.write(line + "\n")
            sys.stderr.flush()
            raise SystemExit(2)
        self.twistd_options = getattr(self, "parent", None) or {}


def check_password_file(security, admin=None):
    """
    Parse the password file now, so a bad line is a config error; check
    that the C{[admin] users} are users of it and that C{[admin] token_file}
    holds a token.

    @raise ConfigError: naming each problem.
    """
    problems = []
    users = {}
    if security.password_file:
        try:
            with open(security.password_file, encoding="utf-8") as f:
                users = parse_password_file(f.read(), security.password_file)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(["config error: security.password_file: cannot read: {}".format(e)])
        except PasswordFileError as e:
            raise ConfigError([
                "config error: security.password_file: " + problem
                for problem in str(e).split("; ")
            ])
    if admin is not None:
        for i, user in enumerate(admin.users):
            if not security.password_file:
                problems.append("config error: admin.users[{}]: {!r} needs"
                                " security.password_file".format(i, user))
            elif user not in users:
                problems.append("config error: admin.users[{}]: {!r} is not a user of {}".format(
                    i, user, security.password_file))
        if admin.token and admin.token_file:
            problems.append("config error: admin.token_file: set token or token_file, not both")
        elif admin.token_file:
            try:
                with open(admin.token_file, encoding="utf-8") as f:
                    if not f.read().strip():
                        problems.append("config error: admin.token_file: file '{}' is"
                                        " empty".format(admin.token_file))
            except (OSError, UnicodeDecodeError) as e:
                problems.append("config error: admin.token_file: cannot read: {}".format(e))
    if problems:
        raise ConfigError(problems)


class TwistdBrokerServer(BrokerServer):
    """
    The broker as twistd runs it: a listener that cannot be bound stops the
    process with a clear message and status 1, a shutdown request stops the
    reactor, and the C{[log]} section decides the log observer (unless
    twistd was given C{--logger}).
    """

    twistd_options = {}

    def setServiceParent(self, parent):
        BrokerServer.setServiceParent(self, parent)
        if (
            not self.twistd_options.get("logger")
            and isinstance(parent, Componentized)
            and parent.getComponent(ILogObserver, None) is None
        ):
            make = observer_factory(self.config.log, self.twistd_options)
            parent.setComponent(ILogObserver, make())

    def privilegedStartService(self):
        try:
            BrokerServer.privilegedStartService(self)
        except (ListenError, StorageError) as e:
            # twistd has redirected sys.stderr into the log by now: say it
            # on the real stderr as well as in the log.
            for line in getattr(e, "problems", None) or [str(e)]:
                self.log.error("error: {problem}", problem=line)
                sys.__stderr__.write("error: " + line + "\n")
            sys.__stderr__.flush()
            raise SystemExit(1)


def makeService(options):
    from twisted.internet import reactor

    broker = TwistdBrokerServer(
        options.broker_config, reactor=reactor, stop_reactor_on_request=True
    )
    broker.twistd_options = getattr(options, "twistd_options", {})
    return broker
