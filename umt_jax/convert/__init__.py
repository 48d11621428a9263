"""Param import/export between umt_jax's Flax trees and the official PyTorch state_dict layouts."""
