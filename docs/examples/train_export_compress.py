"""Train -> export -> compress without the CLI (run next to a log directory `logs/`, e.g. runs/demo/logs)."""
from edge_rerank.api import compress, evaluate, export, train

trained = train("logs", "run", epochs=3, seed=1, progress=False)  # sessions split 70/15/15, recorded in the checkpoint
print(f"test NDCG@10 {trained.test['ndcg@10']:.3f} vs cloud order {trained.test_cloud_order['ndcg@10']:.3f} "
      f"({trained.test_lists} lists of held-out sessions)")
exported = export(trained, "run/export", formats=["onnx"])  # validated on the recorded test lists
shipped = compress(trained, "run/shipped", preset="default")  # budget checked on the same lists
print(f"shipped {shipped.bundle}: {shipped.file_kb:.0f} KB, NDCG@10 loss {shipped.rel_ndcg10_loss_pct:+.2f} %")
print(evaluate(shipped.bundle, "logs").model)  # the bundle on the recorded test split (other logs are refused)
