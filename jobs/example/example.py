# Example HIPE job script (Jython 2.7). BatchProcess.py runs it once per obsid, with these
# variables set by lines it puts in front of this file:
#   obsid   the observation id, e.g. 1342191755
#   outDir  this job's output folder, ending in a path separator
#   jobName the job's name
# In real HIPE you would fetch and reduce the observation here, e.g.
#   obs = getObservation(obsid, useHsa=True)
#   ... pipeline ...
#   saveObservation(obs, poolLocation=outDir)
# The stand-in has no HIPE tasks, so this example only derives a few facts from the obsid and
# writes them as a product, the way a reduction script would.
import os
import time
from java.lang import System

started = time.time()
od_guess = (obsid - 1342000000) // 10000
cacheDir = System.getProperty("hcss.ia.pal.pool.cache.dir")
print "Reducing obsid %d (job %s), pool cache %s" % (obsid, jobName, cacheDir)

product = os.path.join(outDir, "%d.txt" % obsid)
f = open(product, "w")
try:
    f.write("obsid=%d\n" % obsid)
    f.write("od_guess=%d\n" % od_guess)
    f.write("jython=%s\n" % System.getProperty("java.version"))
finally:
    f.close()
print "Wrote %s in %.2f s" % (product, time.time() - started)
