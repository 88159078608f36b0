# The chart of `make bench`: throughput (left) and send-to-start latency
# (right) from throughput.dat and latency.dat, which bench/report.py writes.
# Run in the results folder: gnuplot ../../bench/chart.gp -> chart.png
set terminal pngcairo size 1800,600 font "DejaVu Sans,10"
set output "chart.png"
set multiplot
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top right
set xtics rotate by 0 font ",8"
set bmargin 4

set size 0.64,1
set origin 0,0
set title "Throughput (tasks/s, same broker, same run)"
set ylabel "tasks/s"
set yrange [0:*]
plot "throughput.dat" using 2:xtic(1) title "drain a backlog" lc rgb "#4477aa", \
     "" using 3 title "end to end" lc rgb "#ee6677"

set size 0.36,1
set origin 0.64,0
set title "Latency from send to task start (ms, log scale)"
set key top left
set ylabel "ms"
set logscale y
set yrange [0.05:*]
plot "latency.dat" using 2:xtic(1) title "p50" lc rgb "#228833", \
     "" using 3 title "p99" lc rgb "#ccbb44", \
     "" using 4 title "p99.9" lc rgb "#aa3377"
unset multiplot
