# -*- test-case-name: tests.test_kafka_scram -*-
"""
SCRAM users managed through Kafka (KIP-554): DescribeUserScramCredentials
lists the users' SCRAM mechanisms and iteration counts, and
AlterUserScramCredentials adds, replaces and deletes SCRAM credentials in
the password file (C{[security] password_file}).

A client sends the salt, the iteration count and RFC 5802's SaltedPassword;
the file keeps only StoredKey and ServerKey
(C{user:$scram-sha-512$ITERATIONS$SALT$STORED_KEY$SERVER_KEY} lines), never
the salted password. The file is rewritten atomically (mode 0600) in the
authenticator's threads, one rewrite at a time, keeping every other line;
the response is sent once it is written, and new logins use the new
credentials at once.

A mix-in of L{robustmq.kafka.protocol.KafkaProtocol}: the handlers use its
authenticator, its authorization (C{allowed}) and its response slots.
"""

import hashlib

from robustmq.kafka import errors
from robustmq.kafka.acl import ALTER, CLUSTER, CLUSTER_NAME, DESCRIBE
from robustmq.security import (
    SCRAM_HASHES, PasswordFileError, parse_password_file, scram_entry_from_salted,
    write_private,
)

#: The versions served, merged into ApiVersions by the protocol.
SCRAM_VERSIONS = {
    50: (0, 0),    # DescribeUserScramCredentials
    51: (0, 0),    # AlterUserScramCredentials
}

#: Kafka's ScramMechanism types.
MECHANISM_OF_TYPE = {1: "SCRAM-SHA-256", 2: "SCRAM-SHA-512"}
TYPE_OF_MECHANISM = {m: t for t, m in MECHANISM_OF_TYPE.items()}

#: The iteration counts Kafka accepts.
MIN_ITERATIONS = 4096
MAX_ITERATIONS = 16384

_DIGEST_SIZE = {"SCRAM-SHA-256": hashlib.sha256().digest_size,
                "SCRAM-SHA-512": hashlib.sha512().digest_size}

NO_PASSWORD_FILE = (
    "SCRAM credentials are kept in the password file, and this broker has none:"
    " set [security] password_file")
TWICE = "A user credential cannot be altered twice in the same request"


def _bad_name(name):
    """
    Why a user name cannot be written to the password file, or L{None}.
    """
    if not name:
        return "Username must not be empty"
    if (":" in name or name != name.strip() or name.startswith("#")
            or any(ord(c) < 32 or ord(c) == 127 for c in name)):
        return ("A user name in the password file may not hold ':' or control characters,"
                " begin with '#' or begin or end with white space")
    return None


def _mechanism_of_line(encoded):
    parts = encoded.split("$")
    return SCRAM_HASHES.get(parts[1]) if len(parts) == 6 else None


def edit_password_file(text, alterations):
    """
    Apply SCRAM credential changes to the text of a password file, keeping
    every other line (comments, blank lines, other users and the other
    lines of the users changed) where it is.

    @param alterations: C{{user: [(mechanism, entry or None), ...]}}: an
        entry (a C{$scram-sha-...$} hash) adds or replaces the user's line
        of that mechanism, L{None} deletes it.
    @return: C{(new_text, refused, changed)}: C{refused} is C{{user:
        (error_code, message)}} of the users left as they were (all of a
        user's changes or none), C{changed} C{{user: [encoded_hash, ...]}}
        of the users changed, after the change (an empty list: the user has
        no line left).
    @raise PasswordFileError: the file has bad lines (nothing is changed).
    """
    parse_password_file(text)
    lines = text.splitlines()
    owned = {}
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        user, _, encoded = stripped.partition(":")
        if user in alterations:
            owned.setdefault(user, []).append((index, encoded))
    refused = {}
    replace = {}
    drop = set()
    append_after = {}
    for user, changes in alterations.items():
        mine = owned.get(user, [])
        have = {}
        pbkdf2 = set()
        for index, encoded in mine:
            mechanism = _mechanism_of_line(encoded)
            if mechanism is not None:
                have.setdefault(mechanism, []).append(index)
            parts = encoded.split("$")
            if len(parts) == 5 and parts[1] == "7":
                pbkdf2.add((parts[2], parts[3]))
        problem = None
        for mechanism, entry in changes:
            if entry is None and mechanism not in have:
                problem = (errors.RESOURCE_NOT_FOUND,
                           "Attempt to delete a user credential that does not exist")
                break
            if entry is not None and mechanism == "SCRAM-SHA-512":
                parts = entry.split("$")
                if (parts[2], parts[3]) in pbkdf2:
                    # The $7$ digest would be this credential's salted password.
                    problem = (errors.UNACCEPTABLE_CREDENTIAL,
                               "The salt and iterations of the user's PLAIN password"
                               " hash may not be reused")
                    break
        if problem is not None:
            refused[user] = problem
            continue
        for mechanism, entry in changes:
            indexes = have.get(mechanism, [])
            drop.update(indexes)
            if entry is None:
                continue
            line = "{}:{}".format(user, entry)
            if indexes:
                drop.discard(indexes[0])
                replace[indexes[0]] = line
            else:
                after = mine[-1][0] if mine else len(lines)
                append_after.setdefault(after, []).append(line)
    out = []
    for index, line in enumerate(lines):
        if index not in drop:
            out.append(replace.get(index, line))
        out.extend(append_after.get(index, ()))
    out.extend(append_after.get(len(lines), ()))
    new_text = "\n".join(out) + "\n" if out else ""
    users = parse_password_file(new_text)
    changed = {u: users.get(u, []) for u in alterations if u not in refused}
    return new_text, refused, changed


def rewrite_password_file(path, alterations):
    """
    L{edit_password_file} on the file C{path}, written back atomically with
    mode 0600 when something changed (a blocking call: run it in a thread).

    @return: C{(refused, changed)} as L{edit_password_file}.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    new_text, refused, changed = edit_password_file(text, alterations)
    if changed:
        write_private(path, new_text)
    return refused, changed


class ScramHandlers:
    """
    Handlers of the requests of L{SCRAM_VERSIONS}.
    """

    def scram_handlers(self):
        return {
            50: self.handle_describe_user_scram_credentials,
            51: self.handle_alter_user_scram_credentials,
        }

    # DescribeUserScramCredentials

    def handle_describe_user_scram_credentials(self, version, body, header):
        """
        Every user with SCRAM credentials (sorted by name) when no user is
        named; else each user named once, as Kafka answers.
        """
        response = {"throttle_time_ms": 0, "error_code": errors.NONE, "error_message": None,
                    "results": []}
        if not self.allowed(DESCRIBE, CLUSTER, CLUSTER_NAME):
            # As Kafka: the request-level error, and each user named.
            # (librdkafka 2.x crashes on any request-level error of this
            # response, Kafka's as ours.)
            refused = errors.CLUSTER_AUTHORIZATION_FAILED, "Cluster authorization failed."
            response["error_code"], response["error_message"] = refused
            response["results"] = [
                {"user": u["name"], "error_code": refused[0], "error_message": refused[1],
                 "credential_infos": []} for u in body["users"] or ()]
            return response
        known = self.factory.params.authenticator.scram_iterations()

        def result(user, code=errors.NONE, message=None):
            infos = []
            if code == errors.NONE:
                infos = [{"mechanism": TYPE_OF_MECHANISM[m], "iterations": i}
                         for m, i in sorted(known[user].items(),
                                            key=lambda mi: TYPE_OF_MECHANISM[mi[0]])]
            return {"user": user, "error_code": code, "error_message": message,
                    "credential_infos": infos}

        names = [u["name"] for u in body["users"] or ()]
        results = response["results"]
        if not names:
            results.extend(result(user) for user in sorted(known))
            return response
        counts = {}
        for name in names:
            counts[name] = counts.get(name, 0) + 1
        for name in counts:
            if not name:
                results.append(result(name, errors.RESOURCE_NOT_FOUND,
                                      "Cannot describe SCRAM credentials for empty username"))
            elif counts[name] > 1:
                results.append(result(name, errors.DUPLICATE_RESOURCE, (
                    "Cannot describe SCRAM credentials for the same user twice in a single"
                    " request: {}").format(name)))
            elif name not in known:
                results.append(result(name, errors.RESOURCE_NOT_FOUND, (
                    "Attempt to describe a user credential that does not exist: {}").format(
                        name)))
            else:
                results.append(result(name))
        return response

    # AlterUserScramCredentials

    def handle_alter_user_scram_credentials(self, version, body, header):
        """
        Deletions and upsertions of SCRAM credentials, all of a user's or
        none; answered once the password file is written.
        """
        changes = [(False, a) for a in body["deletions"]]
        changes += [(True, a) for a in body["upsertions"]]
        outcome = {}
        for _, a in changes:
            outcome.setdefault(a["name"], None)

        def finish():
            return {"throttle_time_ms": 0, "results": [
                {"user": user, "error_code": why[0] if why else errors.NONE,
                 "error_message": why[1] if why else None}
                for user, why in outcome.items()]}

        if not self.allowed(ALTER, CLUSTER, CLUSTER_NAME):
            for user in outcome:
                outcome[user] = (errors.CLUSTER_AUTHORIZATION_FAILED,
                                 "Cluster authorization failed.")
            return finish()
        # Kafka's checks in Kafka's order: the name and the mechanism, the
        # iterations, then the same user and mechanism twice.
        pairs = {}
        for upsert, a in changes:
            user = a["name"]
            key = (user, a["mechanism"])
            pairs[key] = pairs.get(key, 0) + 1
            if outcome[user] is not None:
                continue
            why = _bad_name(user)
            if why is not None:
                outcome[user] = (errors.UNACCEPTABLE_CREDENTIAL, why)
            elif a["mechanism"] not in MECHANISM_OF_TYPE:
                outcome[user] = (errors.UNSUPPORTED_SASL_MECHANISM, "Unknown SCRAM mechanism")
            elif upsert:
                outcome[user] = _check_upsertion(a)
        for (user, _), count in pairs.items():
            if count > 1 and outcome[user] is None:
                outcome[user] = (errors.DUPLICATE_RESOURCE, TWICE)
        authenticator = self.factory.params.authenticator
        path = authenticator.password_file
        alterations = {}
        for upsert, a in changes:
            user = a["name"]
            if outcome[user] is not None:
                continue
            if path is None:
                outcome[user] = (errors.SECURITY_DISABLED, NO_PASSWORD_FILE)
                continue
            mechanism = MECHANISM_OF_TYPE[a["mechanism"]]
            entry = None
            if upsert:
                entry = scram_entry_from_salted(
                    bytes(a["salted_password"]), bytes(a["salt"]), a["iterations"], mechanism)
            alterations.setdefault(user, []).append((mechanism, entry))
        self._log_refused(outcome)
        if not alterations:
            return finish()

        def written(result):
            refused, changed = result
            authenticator.update_users(changed)
            outcome.update(refused)
            self._log_refused(refused)
            for user in changed:
                self.log.info(
                    "kafka {peer}: user {who} altered the SCRAM credentials of {user!r}",
                    peer=self.peer, who=self.user or "ANONYMOUS", user=user)
            return finish()

        def failed(failure):
            if failure.check(PasswordFileError):
                self.log.error(
                    "kafka {peer}: SCRAM credentials not altered: password file {path}: {why}",
                    peer=self.peer, path=path, why=failure.value)
            else:
                self.log.failure(
                    "kafka {peer}: SCRAM credentials not altered: cannot rewrite the password"
                    " file {path}", failure, peer=self.peer, path=path)
            for user in alterations:
                outcome[user] = (errors.UNKNOWN_SERVER_ERROR,
                                 "The password file could not be updated (see the broker log)")
            return finish()

        d = authenticator.file_lock.run(
            authenticator.in_thread, rewrite_password_file, path, alterations)
        d.addCallback(written)
        d.addErrback(failed)
        done = []
        d.addCallback(done.append)
        if done:
            return done[0]
        slot = self.open_slot(header)
        d.addCallback(lambda _: self.fill_slot(slot, done[0]))
        return self.LATER

    def _log_refused(self, refused):
        for user, why in refused.items():
            if why is not None:
                self.log.info(
                    "kafka {peer}: user {who}: SCRAM credentials of {user!r} not altered:"
                    " {code}: {message}", peer=self.peer, who=self.user or "ANONYMOUS",
                    user=user, code=errors.error_name(why[0]), message=why[1])


def _check_upsertion(a):
    """
    Why an upsertion is refused (C{(error_code, message)}), or L{None}.
    """
    mechanism = MECHANISM_OF_TYPE[a["mechanism"]]
    if a["iterations"] < MIN_ITERATIONS:
        return errors.UNACCEPTABLE_CREDENTIAL, "Too few iterations"
    if a["iterations"] > MAX_ITERATIONS:
        return errors.UNACCEPTABLE_CREDENTIAL, "Too many iterations"
    if not a["salt"]:
        return errors.UNACCEPTABLE_CREDENTIAL, "Salt must not be empty"
    if len(a["salted_password"]) != _DIGEST_SIZE[mechanism]:
        return errors.UNACCEPTABLE_CREDENTIAL, (
            "A {} salted password is {} bytes".format(mechanism, _DIGEST_SIZE[mechanism]))
    return None


__all__ = ["ScramHandlers", "SCRAM_VERSIONS", "edit_password_file", "rewrite_password_file"]
