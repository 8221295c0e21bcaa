# Vitis HLS flow of the M3ViT MoE layer for the ZCU104 (xczu7ev-ffvc1156-2-e).
#
#   vitis_hls -f run_hls.tcl
#
# Settings (environment variables; defaults in brackets):
#   M3VIT_CLOCK_MHZ  target clock [200]; 300 is the upper end the design aims at
#   M3VIT_TOP        top function [m3vit_moe]; m3vit_moe_token_by_token synthesizes the baseline
#   M3VIT_STEPS      steps to run ["csim csynth cosim export"]
#   M3VIT_VECTORS    test-vector directory for csim/cosim [vectors/layer0, else the first one]
#   M3VIT_CSIM_FLOAT 1: C-simulate the float build (-DM3VIT_FLOAT) instead of the fixed one
# Sizes come from m3vit_moe_params.h (written by `fastpaper hls bundle`); without it the M3ViT
# ViT-S layer (D = H = 384, E = 16, k = 4, 1201 tokens) is built.
# Co-simulation of a whole layer is slow (RTL simulation of ~millions of cycles); the bundle's
# vectors use few tokens (`fastpaper hls bundle --tokens`) so that it finishes in minutes to hours.

proc env_or {name default} {
  if {[info exists ::env($name)] && $::env($name) ne ""} { return $::env($name) }
  return $default
}

set clock_mhz [env_or M3VIT_CLOCK_MHZ 200]
set top       [env_or M3VIT_TOP m3vit_moe]
set steps     [env_or M3VIT_STEPS "csim csynth cosim export"]
set vectors   [env_or M3VIT_VECTORS vectors/layer0]
set here      [file normalize [file dirname [info script]]]
set cflags    "-std=c++14 -I$here"
set tbflags   $cflags
if {[env_or M3VIT_CSIM_FLOAT 0]} { set tbflags "$cflags -DM3VIT_FLOAT" }

open_project -reset m3vit_moe_prj
set_top $top
add_files $here/m3vit_moe.cpp -cflags $cflags
add_files -tb $here/m3vit_moe_tb.cpp -cflags $tbflags
open_solution -reset solution1 -flow_target vivado
set_part xczu7ev-ffvc1156-2-e
create_clock -period [expr {1000.0 / $clock_mhz}] -name default
set_clock_uncertainty 12.5%
# 128-bit HP ports; bursts aligned to 64 B; DDR latency assumed ~64 cycles.
config_interface -m_axi_alignment_byte_size 64 -m_axi_latency 64 -m_axi_max_widen_bitwidth 128 \
  -m_axi_addr64
config_compile -pipeline_loops 64
config_export -format ip_catalog -rtl verilog -vendor fastpaper -library hls -version 1.0 \
  -display_name m3vit_moe

# A bundle exported without layer 0 (--layer): fall back to its first vector directory.
if {![file isdirectory $vectors]} {
  set found [lsort -dictionary [glob -nocomplain -type d vectors/layer*]]
  if {[llength $found] > 0} { set vectors [lindex $found 0] }
}
set vec [file normalize $vectors]
if {[lsearch $steps csim] >= 0} {
  csim_design -argv "$vec --out [pwd]/csim_result.json"
}
if {[lsearch $steps csynth] >= 0} {
  csynth_design
}
if {[lsearch $steps cosim] >= 0} {
  cosim_design -argv "$vec --out [pwd]/cosim_result.json" -trace_level none
}
if {[lsearch $steps export] >= 0} {
  export_design -format ip_catalog -rtl verilog
}
exit
