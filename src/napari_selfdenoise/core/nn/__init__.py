"""The networks (U-Nets, N2V2, the N-net noise head) and the choice of device."""
