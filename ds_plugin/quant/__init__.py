"""ds_plugin.quant"""
