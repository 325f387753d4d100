"""Post-training: instruction and preference data, the chat template, SFT, DPO, reward models, PPO, SliCK, self-instruct."""
