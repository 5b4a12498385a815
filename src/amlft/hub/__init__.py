"""Publishing a fine-tuned model to the Hugging Face Hub, with a model card written from the run record.

    facts.py    what the run record knows about the model (pure, offline)
    card.py     model card / dataset card from those facts, checked with huggingface_hub's card API
    plan.py     the exact files one commit would upload; `--dry-run` writes the plan and the card
    token.py    finding the user's token and proving it can write, without ever printing it
    publish.py  create the repo (private by default) and upload the plan in one commit

huggingface_hub is imported only inside the functions that need it, so importing this
package (or `amlft.cli.publish`) stays instant.
"""
