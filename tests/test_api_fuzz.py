"""The JSON API fuzzed from its own OpenAPI schema with schemathesis: every operation gets the
schema's boundary cases (coverage phase) and generated requests, valid and invalid (fuzzing phase),
with the staff login. No request may get a 5xx, and every response must match what the schema
documents (status code, content type, body schema). Bounded: few examples per operation and a
fixed seed, so a CI run takes well under 90 seconds and fails the same way twice."""

import os
import socket

import pytest
import schemathesis

from whyrec.service.passwords import hash_password

pytestmark = pytest.mark.integration
STAFF = ("agent", "correct horse")
EXAMPLES = int(os.environ.get("WHYREC_FUZZ_EXAMPLES", "6"))


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def fuzz_app(slice_settings, slice_catalog, slice_ranker, tmp_path_factory):
    from whyrec.pipeline import Recommender, build_explainer, build_retriever, embedding_retriever
    from whyrec.service.api import create_app
    from whyrec.service.service import WhyrecService
    from whyrec.service.store import Store
    from whyrec.service.telemetry import ServiceMetrics

    settings = slice_settings.model_copy(update={
        # The fuzz tests the HTTP contract, not the wording: the generator is a real OpenAI client
        # whose server is down (nothing listens on the port), so every explanation is the template
        # fallback and a request for one of the slice's real shoppers costs one refused connection,
        # not minutes of CPU generation. The service must handle that state anyway.
        "llm_url": f"http://127.0.0.1:{_closed_port()}/v1",
        "llm_model": "smollm2-135m-instruct",
        "llm_timeout_s": 2.0,
        "llm_concurrency": 50,  # one batch for any slate size the API allows
        "database_url": f"sqlite:///{tmp_path_factory.mktemp('fuzz-store') / 'whyrec.sqlite3'}",
        "staff_user": STAFF[0],
        "staff_password_hash": hash_password(STAFF[1], iterations=1_000),
    })
    # The fuzz adds and removes catalog items (/api/catalog): on an item index of its own, so the
    # session's retriever stays as trained for the other tests.
    retriever = build_retriever(slice_settings, slice_catalog, embedding_retriever(slice_settings, slice_catalog))
    recommender = Recommender(settings, slice_catalog, retriever, slice_ranker, build_explainer(settings))
    return create_app(WhyrecService(recommender, Store(settings.database_url), ServiceMetrics()), settings)


def test_no_request_gets_a_server_error_and_every_response_matches_the_schema(fuzz_app):
    from schemathesis.engine import Status, events, from_schema

    config = schemathesis.Config.from_dict({
        "seed": int(os.environ.get("WHYREC_FUZZ_SEED", "6")),
        "max-time": 50,  # a hard stop for CI: the request in flight then finishes, and the run ends
        "request-timeout": 60,  # a 50-item slate for a real shopper is seconds of ranking on a busy 2-core box
        # No replay of earlier runs: CI and here agree. Security parameters are not generated: the
        # staff login below fills them, so a "request without its Authorization header" case came
        # back with the header and a 200, a false negative_data_rejection failure; tests/test_security.py
        # covers missing and wrong logins on every route.
        "generation": {"mode": "all", "max-examples": EXAMPLES, "database": "none", "with-security-parameters": False},
        "phases": {"stateful": {"enabled": False}},
        # A schema-valid request may still break a rule the schema cannot state (helpful without the
        # impression it rates, stop using a purchase that is not in the history, a shopper over the
        # event limit): the API answers those with a documented 422 naming the reason.
        "checks": {
            # WHYREC_MAX_BODY_BYTES counts bytes, a schema's maxLength characters: a long template of
            # many-byte characters can be schema-valid and still over the body limit (413, documented).
            "positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "404", "409", "413", "422", "429"]},
            # An invalid request may likewise be refused for its size before it is read.
            "negative_data_rejection": {"expected-statuses": ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]},
        },
        "auth": {"basic": {"username": STAFF[0], "password": STAFF[1]}},
    })
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app, config=config)
    failures, errors, statuses, operations, slowest = [], [], {}, set(), []
    # The engine is what `schemathesis run` drives (schemathesis' pytest plugin does not run on
    # pytest 9); every scenario's checks are collected and reported together.
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            operations.add(event.recorder.label)
            for interaction in event.recorder.interactions.values():
                if interaction.response is not None:
                    statuses[interaction.response.status_code] = statuses.get(interaction.response.status_code, 0) + 1
                    slowest = sorted([*slowest, (round(interaction.response.elapsed, 1), interaction.request.method, interaction.request.uri[:100])], reverse=True)[:3]
            for checks in event.recorder.checks.values():
                failures += [f"{event.recorder.label}: {c.name}: {c.failure_info.failure.title}: {c.failure_info.failure.message[:300]}\n{c.failure_info.code_sample}" for c in checks if c.status is Status.FAILURE and c.failure_info]
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            errors.append(f"{getattr(event, 'label', '')}: {event.info.message if hasattr(event, 'info') else event}")
        elif isinstance(event, events.EngineFinished):
            print(f"fuzzed {len(operations)} operations, {sum(statuses.values())} requests in {event.running_time:.0f}s ({event.stop_reason.value}), "
                  f"status codes {dict(sorted(statuses.items()))}; slowest: {slowest}")
    assert not errors, "\n".join(errors)
    assert not failures, "\n\n".join(sorted(set(failures)))
    # It really ran: every operation, and both accepted and refused requests.
    assert len(operations) >= len(schema.raw_schema["paths"]) and 200 in statuses and 422 in statuses, (operations, statuses)
    assert not any(code >= 500 for code in statuses)
