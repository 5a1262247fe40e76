"""Nothing leaves the device without opt-in: search requests cannot carry feedback, and without opt-in no
impression log (which holds the session's feedback) is uploaded."""

from edge_rerank.device_sdk import wire
from edge_rerank.device_sdk.privacy import PrivacyConfig, outgoing_log_rows


class RecordingCloud:
    """A transport that records everything the phone sends, forwarding to the real in-process cloud."""

    def __init__(self, inner):
        self.inner, self.requests, self.uploads = inner, [], []

    def search(self, req):
        self.requests.append(wire.request_to_proto(req).SerializeToString())
        return self.inner.search(req)

    def post_logs(self, rows):
        self.uploads.append(list(rows))
        return self.inner.post_logs(rows)


def test_search_requests_have_no_field_that_could_carry_feedback():
    fields = {f.name for f in wire.pb.SearchRequest.DESCRIPTOR.fields}
    assert fields == {"request_id", "session_id", "user_id", "query", "context", "page_index", "page_size"}, fields


def test_without_opt_in_a_session_produces_nothing_to_upload(world, inproc_cloud):
    from edge_rerank.pipeline import simulate_sessions_with_uploads
    from edge_rerank.simulator.phone import Phone
    from edge_rerank.simulator.user_model import UserModel

    cloud = RecordingCloud(inproc_cloud)
    off = Phone(UserModel(world), cloud, arm="cloud", privacy=PrivacyConfig())
    sent = simulate_sessions_with_uploads(off, [world.session(i, 5) for i in range(30)], cloud, progress=False)
    assert sent == 0 and cloud.uploads == [] and len(cloud.requests) >= 30
    on = Phone(UserModel(world), cloud, arm="cloud", privacy=PrivacyConfig(share_impression_logs=True))
    sent = simulate_sessions_with_uploads(on, [world.session(i, 5) for i in range(30)], cloud, progress=False)
    assert sent > 0 and any(r.events for batch in cloud.uploads for r in batch)


def test_default_is_off():
    assert PrivacyConfig().share_impression_logs is False
    assert outgoing_log_rows(["row"], PrivacyConfig()) == []
