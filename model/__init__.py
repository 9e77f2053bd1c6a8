"""ebmm.model: Energy-Based Memory Models (Bartunov et al., ICLR 2020) in pure PyTorch."""
