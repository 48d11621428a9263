"""One trainer per stage: clip (stage 0, demo teacher), umt (stage 1), finetune (classification)."""
