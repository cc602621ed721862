"""ds_plugin.moe"""
