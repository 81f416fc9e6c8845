"""The follow service: who follows which creator, stored by creator and by follower."""
