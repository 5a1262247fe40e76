from edge_rerank.device_sdk import (Context, EventKind, FeedbackEvent, ModelManager, RerankService, RerankSession,
                                    page_from_bytes)

manager = ModelManager()                    # in an app: ModelManager(root=...).update(HttpBundleSource(url), ...)
manager.install(BUNDLE_DIR)                 # verified + warmed up, or refused (the last good model keeps serving)
session = RerankSession("session-1", Context(lat=5.0, lon=5.0, hour=19), RerankService(manager))

page = page_from_bytes(PAGE_BYTES)          # the body of a /v1/search answer: 25 items in the cloud's order
session.add_page(page)
session.reveal(4)                           # items 0-3 are on screen: they never move again
item = session.items[1]                     # the user opens the second item, then comes back after 9 s
session.record(FeedbackEvent.for_item(item, EventKind.CLICK, 1_000, page.request_id, position=1))
update = session.record(FeedbackEvent.for_item(item, EventKind.DETAIL_RETURN, 10_000, page.request_id, 1, 9_000))
print(update.reason, update.status, update.moved)   # click_return applied 19: the unseen items were reordered
to_draw = session.items[session.n_revealed:]        # what the list shows from the next screen on
