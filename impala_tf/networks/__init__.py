"""Keras models of the IMPALA agent: torsos, LSTM core, instruction encoder, agent."""

from impala_tf.networks.agent import (Agent, AgentInput, AgentOutput, build_agent,
                                      sample_actions)
from impala_tf.networks.instruction import InstructionEncoder, tokenize_instruction
from impala_tf.networks.lstm import LSTMState, ResettableLSTM
from impala_tf.networks.torsos import DeepTorso, ShallowTorso, make_torso

__all__ = [
    "Agent", "AgentInput", "AgentOutput", "build_agent", "sample_actions", "InstructionEncoder",
    "tokenize_instruction", "LSTMState", "ResettableLSTM", "DeepTorso", "ShallowTorso",
    "make_torso",
]
