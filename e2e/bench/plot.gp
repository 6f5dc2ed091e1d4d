# The scale bench's status lags: their distribution per round, and each round's time from its
# first Service created to its last status complete against the number of Services, beside the
# time to its last proxy pod Ready. Run by bench.sh:
#   gnuplot -e "dir='target/bench'" e2e/bench/plot.gp
set terminal pngcairo size 900,520 font ",11"
set datafile separator "\t"
set key top left
set grid

set output dir."/status-lag-cdf.png"
set title "Status lag per Service: last proxy pod Ready to status written (pools of 10 simulated nodes)"
set xlabel "lag (ms)"
set ylabel "share of Services"
set yrange [0:1]
# Each round's lags are sorted, so a line's nth point is at n / count.
plot for [n in "100 300 1000"] dir."/lags.tsv" \
  using ($1 == n+0 ? $2 : NaN):(1) smooth cnormal title n." Services"

set output dir."/ready.png"
set title "First Service created to last status complete, and to last proxy pod Ready"
set xlabel "Services"
set ylabel "seconds"
set autoscale y
set yrange [0:*]
set xrange [0:1100]
plot dir."/ready.tsv" using 1:2 with linespoints pt 7 title "every status complete (hostlb-controller)", \
  dir."/ready.tsv" using 1:3 with linespoints pt 5 title "every proxy pod Ready (scheduler, DaemonSets, kubelets)"
