# Vivado block design for the ZCU104: Zynq UltraScale+ PS, the m3vit_moe IP, AXI interconnect.
#
#   vivado -mode batch -source vivado_bd.tcl      (after `vitis_hls -f run_hls.tcl`)
#
# Produces m3vit_moe.bit and m3vit_moe.hwh here (the PYNQ overlay: fastpaper.moe.fpga).
# Settings: M3VIT_CLOCK_MHZ [200] (PL clock 0), M3VIT_IP_REPO [m3vit_moe_prj/solution1/impl/ip].
# Port map: s_axi_control <- M_AXI_HPM0_FPD (via interconnect); m_axi_gmem_w (weights) ->
# S_AXI_HP0_FPD; m_axi_gmem_act (x, y) -> S_AXI_HP1_FPD (separate DDR paths for the two bundles).

proc env_or {name default} {
  if {[info exists ::env($name)] && $::env($name) ne ""} { return $::env($name) }
  return $default
}
set clock_mhz [env_or M3VIT_CLOCK_MHZ 200]
set here      [file normalize [file dirname [info script]]]
set ip_repo   [file normalize [env_or M3VIT_IP_REPO $here/m3vit_moe_prj/solution1/impl/ip]]

create_project -force m3vit_moe_bd $here/m3vit_moe_bd -part xczu7ev-ffvc1156-2-e
catch { set_property board_part xilinx.com:zcu104:part0:1.1 [current_project] }
set_property ip_repo_paths $ip_repo [current_project]
update_ip_catalog

create_bd_design design_1
set ps [create_bd_cell -type ip -vlnv xilinx.com:ip:zynq_ultra_ps_e zynq_ultra_ps_e_0]
apply_bd_automation -rule xilinx.com:bd_rule:zynq_ultra_ps_e \
  -config {apply_board_preset "1"} $ps
set_property -dict [list \
  CONFIG.PSU__USE__M_AXI_GP0 {1} CONFIG.PSU__USE__M_AXI_GP1 {0} CONFIG.PSU__USE__M_AXI_GP2 {0} \
  CONFIG.PSU__USE__S_AXI_GP2 {1} CONFIG.PSU__USE__S_AXI_GP3 {1} \
  CONFIG.PSU__SAXIGP2__DATA_WIDTH {128} CONFIG.PSU__SAXIGP3__DATA_WIDTH {128} \
  CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ $clock_mhz] $ps

set moe [create_bd_cell -type ip -vlnv fastpaper:hls:m3vit_moe:1.0 m3vit_moe_0]

# Control: PS master -> interconnect -> s_axi_control.
apply_bd_automation -rule xilinx.com:bd_rule:axi4 -config [list \
  Clk_master {/zynq_ultra_ps_e_0/pl_clk0} Clk_slave {/zynq_ultra_ps_e_0/pl_clk0} \
  Clk_xbar {/zynq_ultra_ps_e_0/pl_clk0} Master {/zynq_ultra_ps_e_0/M_AXI_HPM0_FPD} \
  Slave {/m3vit_moe_0/s_axi_control} intc_ip {New AXI Interconnect} master_apm {0}] \
  [get_bd_intf_pins m3vit_moe_0/s_axi_control]
# Data: weights on HP0, activations on HP1 (each through its own interconnect / SmartConnect).
apply_bd_automation -rule xilinx.com:bd_rule:axi4 -config [list \
  Clk_master {/zynq_ultra_ps_e_0/pl_clk0} Clk_slave {/zynq_ultra_ps_e_0/pl_clk0} \
  Clk_xbar {/zynq_ultra_ps_e_0/pl_clk0} Master {/m3vit_moe_0/m_axi_gmem_w} \
  Slave {/zynq_ultra_ps_e_0/S_AXI_HP0_FPD} intc_ip {Auto} master_apm {0}] \
  [get_bd_intf_pins zynq_ultra_ps_e_0/S_AXI_HP0_FPD]
apply_bd_automation -rule xilinx.com:bd_rule:axi4 -config [list \
  Clk_master {/zynq_ultra_ps_e_0/pl_clk0} Clk_slave {/zynq_ultra_ps_e_0/pl_clk0} \
  Clk_xbar {/zynq_ultra_ps_e_0/pl_clk0} Master {/m3vit_moe_0/m_axi_gmem_act} \
  Slave {/zynq_ultra_ps_e_0/S_AXI_HP1_FPD} intc_ip {Auto} master_apm {0}] \
  [get_bd_intf_pins zynq_ultra_ps_e_0/S_AXI_HP1_FPD]
# Interrupt (optional for PYNQ polling).
catch { connect_bd_net [get_bd_pins m3vit_moe_0/interrupt] [get_bd_pins zynq_ultra_ps_e_0/pl_ps_irq0] }

assign_bd_address
validate_bd_design
save_bd_design

make_wrapper -files [get_files design_1.bd] -top
add_files -norecurse [glob $here/m3vit_moe_bd/m3vit_moe_bd.gen/sources_1/bd/design_1/hdl/design_1_wrapper.v]
set_property top design_1_wrapper [current_fileset]
launch_runs impl_1 -to_step write_bitstream -jobs 8
wait_on_run impl_1

file copy -force [glob $here/m3vit_moe_bd/m3vit_moe_bd.runs/impl_1/*.bit] $here/m3vit_moe.bit
file copy -force [glob $here/m3vit_moe_bd/m3vit_moe_bd.gen/sources_1/bd/design_1/hw_handoff/design_1.hwh] \
  $here/m3vit_moe.hwh
open_run impl_1
report_utilization -file $here/m3vit_moe_utilization.rpt
report_timing_summary -file $here/m3vit_moe_timing.rpt
puts "wrote m3vit_moe.bit, m3vit_moe.hwh and the utilization / timing reports"
