"""Ray Tune + Optuna hyperparameter search over mnist_net. Imports mnist_net, never the reverse."""
